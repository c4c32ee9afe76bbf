import tomllib
from pathlib import Path

import attrs

import trio_mta.config
from trio_mta.config import (
    BareLineEndings,
    Config,
    Limits,
    ListenerConfig,
    ListenerKind,
    load_config,
)

SHIPPED_CONF = Path(__file__).resolve().parents[2] / "conf"


def test_public_surface_is_curated() -> None:
    public = {name for name in dir(trio_mta.config) if not name.startswith("_")}
    assert public == {
        "AdminConfig",
        "AuthConfig",
        "admin_problems",
        "BareLineEndings",
        "CONFIG_FILE_NAME",
        "Config",
        "ConfigChanges",
        "compare_configs",
        "ConfigError",
        "ConfigIssue",
        "DataConfig",
        "Limits",
        "ListenerConfig",
        "ListenerKind",
        "LogConfig",
        "LogDestination",
        "LogFormat",
        "PluginsConfig",
        "QueueConfig",
        "ResolverConfig",
        "RouteConfig",
        "ServerConfig",
        "Timeouts",
        "CertFiles",
        "TlsConfig",
        "TlsFiles",
        "TlsVersion",
        "TlsPolicy",
        "certificate_files",
        "pair_problem",
        "format_listen",
        "load_config",
        "parse_listen",
    }


def test_no_config_dir_gives_embedded_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.config_dir is None
    assert [(x.name, x.host, x.port, x.kind) for x in config.listeners] == [
        ("mx", "127.0.0.1", 2525, ListenerKind.MX),
        ("submission", "127.0.0.1", 5587, ListenerKind.SUBMISSION),
        ("smtps", "127.0.0.1", 5465, ListenerKind.SMTPS),
    ]
    assert config.tls.enabled
    assert config.tls.generate_self_signed
    assert config.server.local_domains == ("localhost", "example.test")
    assert config.limits.max_message_size == 35 * 1024 * 1024
    assert config.timeouts.command == 300.0
    assert config.data.bare_line_endings is BareLineEndings.REJECT
    assert config.plugins.order == ("rcpt_to_host_list", "queue_maildir")
    assert config.log.level == "INFO"


def test_missing_file_gives_defaults_with_config_dir(tmp_path: Path) -> None:
    assert load_config(tmp_path) == attrs.evolve(Config(), config_dir=tmp_path)


def test_shipped_conf_equals_embedded_defaults() -> None:
    assert (SHIPPED_CONF / "trio-mta.toml").is_file()
    shipped = load_config(SHIPPED_CONF)
    # The per-plugin files are each plugin's business (its own tests check them).
    # The one difference: the shipped file loads auth_flat_file, so submission works out of
    # the box (the file's header says so).
    assert shipped.plugins.order == ("auth_flat_file", *Config().plugins.order)
    defaults = Config()
    assert attrs.evolve(shipped, plugin_configs={}) == attrs.evolve(
        defaults,
        config_dir=SHIPPED_CONF,
        plugins=attrs.evolve(defaults.plugins, order=shipped.plugins.order),
    )
    assert "queue_maildir" in shipped.plugin_configs


def test_shipped_conf_spells_out_every_key() -> None:
    # Equality alone would pass if a key were deleted (it falls back to its default), so check
    # that operators can see every key in the shipped file.
    document = tomllib.loads((SHIPPED_CONF / "trio-mta.toml").read_text())
    defaults = Config()
    sections = {
        field.name
        for field in attrs.fields(Config)
        # routes: none by default, shown as a commented-out [[route]] example.
        if field.name not in {"listeners", "config_dir", "plugin_configs", "routes"}
    }
    assert set(document) == sections | {"listener"}
    for name in sections:
        section = getattr(defaults, name)
        assert set(document[name]) == set(attrs.fields_dict(type(section))), name
    # The first listener shows every key; the others only what they change.
    every = {"name", "listen", "kind", "auth", "auth_allow_plaintext"}
    first, *others = [set(table) for table in document["listener"]]
    assert first == every
    assert others == [{"name", "listen", "kind"}] * 2


def test_partial_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "trio-mta.toml").write_text(
        """
        [limits]
        max_recipients = 5

        [timeouts]
        banner = 10          # an integer is fine where seconds are expected

        [server]
        local_domains = ["Example.COM"]

        [[listener]]
        name = "mx"
        listen = "[::1]:25"

        [[listener]]
        name = "submission"
        listen = "localhost:587"
        kind = "submission"
        """
    )
    config = load_config(tmp_path)
    defaults = Config()
    assert config == attrs.evolve(
        defaults,
        limits=Limits(max_recipients=5),
        timeouts=attrs.evolve(defaults.timeouts, banner=10.0),
        server=attrs.evolve(defaults.server, local_domains=("example.com",)),
        listeners=(
            ListenerConfig(name="mx", host="::1", port=25),
            ListenerConfig(
                name="submission", host="localhost", port=587, kind=ListenerKind.SUBMISSION
            ),
        ),
        config_dir=tmp_path,
    )
    assert type(config.timeouts.banner) is float
