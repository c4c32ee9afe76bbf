"""Configuration: ``conf/trio-mta.toml`` into a validated, frozen attrs tree.

Pure (stdlib and attrs only): no trio, no DNS, no I/O beyond reading the one file.
"""

from ._loader import CONFIG_FILE_NAME as CONFIG_FILE_NAME
from ._loader import ConfigError as ConfigError
from ._loader import ConfigIssue as ConfigIssue
from ._loader import load_config as load_config
from ._schema import BareLineEndings as BareLineEndings
from ._schema import Config as Config
from ._schema import DataConfig as DataConfig
from ._schema import Limits as Limits
from ._schema import ListenerConfig as ListenerConfig
from ._schema import ListenerKind as ListenerKind
from ._schema import LogConfig as LogConfig
from ._schema import PluginsConfig as PluginsConfig
from ._schema import ServerConfig as ServerConfig
from ._schema import Timeouts as Timeouts
from ._schema import format_listen as format_listen
from ._schema import parse_listen as parse_listen
