"""Configuration: ``conf/trio-mta.toml`` into a validated, frozen attrs tree.

Pure (stdlib and attrs only): no trio, no DNS; the only I/O is reading the config files and
checking that the certificates ``[tls]`` names load.
"""

from ._admin import AdminConfig as AdminConfig
from ._admin import admin_problems as admin_problems
from ._diff import ConfigChanges as ConfigChanges
from ._diff import compare_configs as compare_configs
from ._loader import CONFIG_FILE_NAME as CONFIG_FILE_NAME
from ._loader import ConfigError as ConfigError
from ._loader import ConfigIssue as ConfigIssue
from ._loader import load_config as load_config
from ._queue import QueueConfig as QueueConfig
from ._queue import ResolverConfig as ResolverConfig
from ._queue import RouteConfig as RouteConfig
from ._queue import TlsPolicy as TlsPolicy
from ._schema import AuthConfig as AuthConfig
from ._schema import BareLineEndings as BareLineEndings
from ._schema import Config as Config
from ._schema import DataConfig as DataConfig
from ._schema import Limits as Limits
from ._schema import ListenerConfig as ListenerConfig
from ._schema import ListenerKind as ListenerKind
from ._schema import LogConfig as LogConfig
from ._schema import LogDestination as LogDestination
from ._schema import LogFormat as LogFormat
from ._schema import PluginsConfig as PluginsConfig
from ._schema import ServerConfig as ServerConfig
from ._schema import Timeouts as Timeouts
from ._schema import TlsConfig as TlsConfig
from ._schema import TlsVersion as TlsVersion
from ._schema import format_listen as format_listen
from ._schema import parse_listen as parse_listen
from ._tlsfiles import CertFiles as CertFiles
from ._tlsfiles import TlsFiles as TlsFiles
from ._tlsfiles import certificate_files as certificate_files
from ._tlsfiles import pair_problem as pair_problem
