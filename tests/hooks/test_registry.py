"""Loading plugins by name from plugin directories; configuration; generations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trio_mta.hooks import (
    Action,
    HookRunner,
    PluginLoadError,
    builtin_plugin_dir,
    load_plugins,
)

from ._support import new_conn, write_plugin

SIMPLE = """
class Plugin(Base):
    async def hook_data(self, conn):
        return ok("from the user directory")
"""


def test_a_plugin_is_loaded_by_name_from_a_directory(plugin_dir: Path) -> None:
    path = write_plugin(plugin_dir, "simple", SIMPLE)
    plugins = load_plugins(["simple"], directories=[plugin_dir])
    assert plugins.sources == {"simple": path}
    assert [p.name for p in plugins.plugins] == ["simple"]
    [entry] = plugins.entries("data")
    assert (entry.hook, entry.is_async, entry.sandbox, entry.timeout) == ("data", True, False, 30.0)


def test_the_user_directory_overrides_a_builtin(plugin_dir: Path) -> None:
    assert (builtin_plugin_dir() / "rcpt_to_host_list.py").is_file()
    path = write_plugin(plugin_dir, "rcpt_to_host_list", SIMPLE)
    plugins = load_plugins(["rcpt_to_host_list"], directories=[plugin_dir])
    assert plugins.sources["rcpt_to_host_list"] == path
    assert set(plugins.table) == {"data"}


def test_a_builtin_is_found_when_no_user_directory_has_it(plugin_dir: Path) -> None:
    plugins = load_plugins(
        ["rcpt_to_host_list"],
        directories=[plugin_dir],
        configs={"rcpt_to_host_list": {"host_list": ["example.test"]}},
    )
    assert plugins.sources["rcpt_to_host_list"] == builtin_plugin_dir() / "rcpt_to_host_list.py"
    assert set(plugins.table) == {"rcpt"}


@pytest.mark.parametrize("name", ["../simple", "sim-ple", "", "a b", "x.y"])
def test_a_name_that_is_not_an_identifier_is_refused(plugin_dir: Path, name: str) -> None:
    write_plugin(plugin_dir, "simple", SIMPLE)
    with pytest.raises(PluginLoadError, match="not a valid plugin name"):
        load_plugins([name], directories=[plugin_dir])


def test_a_missing_plugin_names_the_directories_searched(plugin_dir: Path) -> None:
    with pytest.raises(PluginLoadError, match=re.escape(f"no nowhere.py in {plugin_dir}")):
        load_plugins(["nowhere"], directories=[plugin_dir])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def broken(:\n", "import failed: SyntaxError"),
        ("raise RuntimeError('at import')\n", "import failed: RuntimeError"),
        ("Plugin = 3\n", "has no Plugin class"),
    ],
)
def test_a_plugin_that_does_not_import_is_refused(
    plugin_dir: Path, body: str, message: str
) -> None:
    write_plugin(plugin_dir, "bad", body)
    with pytest.raises(PluginLoadError, match=re.escape("plugin 'bad': ") + ".*" + message):
        load_plugins(["bad"], directories=[plugin_dir])


def test_a_method_for_an_unknown_hook_is_refused(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "typo",
        "class Plugin(Base):\n    async def hook_mial(self, conn):\n        pass\n",
    )
    with pytest.raises(PluginLoadError, match="hook_mial: no such hook 'mial'"):
        load_plugins(["typo"], directories=[plugin_dir])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"timeout": -1}, "plugin simple.timeout: must be a positive number"),
        ({"timeout": "5"}, "plugin simple.timeout: must be a positive number"),
        ({"timeout": True}, "plugin simple.timeout: must be a positive number"),
        ({"sandbox": "thread"}, 'plugin simple.sandbox: must be "process" or "none"'),
        ({"priority": 1.5}, "plugin simple.priority: must be an integer"),
        ({"on_error": "maybe"}, "plugin simple.on_error: must be one of"),
        ({"hooks": []}, "plugin simple.hooks: must be a table"),
        ({"hooks": {"data": 5}}, "plugin simple.hooks.data: must be a table"),
        ({"hooks": {"data": {"timout": 5}}}, "plugin simple.hooks.data: unknown keys ['timout']"),
        ({"hooks": {"data": {"on_timeout": "x"}}}, "plugin simple.hooks.data.on_timeout"),
    ],
)
def test_a_bad_runner_setting_is_refused_with_its_key(
    plugin_dir: Path, config: dict[str, object], message: str
) -> None:
    write_plugin(plugin_dir, "simple", SIMPLE)
    with pytest.raises(PluginLoadError, match=re.escape(message)):
        load_plugins(["simple"], directories=[plugin_dir], configs={"simple": config})


def test_a_plugin_may_refuse_its_own_configuration(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "picky",
        """
        class Plugin(Base):
            def setup(self):
                if not isinstance(self.config.get("limit", 1), int):
                    raise ValueError("limit must be an integer")

            async def hook_data(self, conn):
                pass
        """,
    )
    plugins = load_plugins(["picky"], directories=[plugin_dir], configs={"picky": {"limit": 3}})
    assert plugins.plugins[0].config == {"limit": 3}
    with pytest.raises(PluginLoadError, match="'picky': configuration refused: limit must be"):
        load_plugins(["picky"], directories=[plugin_dir], configs={"picky": {"limit": "x"}})


def test_a_plugin_listed_twice_is_refused(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "simple", SIMPLE)
    with pytest.raises(PluginLoadError, match="listed twice"):
        load_plugins(["simple", "simple"], directories=[plugin_dir])


def test_options_come_from_config_then_decorator_then_class(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "layered",
        """
        class Plugin(Base):
            timeout = 9
            priority = 4

            @hook(timeout=3, sandbox="process")
            def hook_data(self, conn):
                pass

            async def hook_helo(self, conn, name):
                pass

            async def hook_mail(self, conn, sender, params):
                pass
        """,
    )
    config = {"on_timeout": "deny", "hooks": {"helo": {"timeout": 1, "priority": -2}}}
    plugins = load_plugins(
        ["layered"], directories=[plugin_dir], configs={"layered": config}, default_timeout=30
    )
    [data], [helo], [mail] = (
        plugins.entries("data"),
        plugins.entries("helo"),
        plugins.entries("mail"),
    )
    assert (data.timeout, data.sandbox, data.is_async, data.priority) == (3.0, True, False, 4)
    assert (helo.timeout, helo.sandbox, helo.priority) == (1.0, False, -2)
    assert (mail.timeout, mail.on_timeout.action) == (9.0, Action.DENY)


async def test_each_generation_imports_the_code_afresh(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "changing", SIMPLE.replace("from the user directory", "first"))
    first = load_plugins(["changing"], directories=[plugin_dir])
    write_plugin(plugin_dir, "changing", SIMPLE.replace("from the user directory", "second!"))
    second = load_plugins(["changing"], directories=[plugin_dir])
    assert second.generation > first.generation
    old, _ = await HookRunner(first).run("data", new_conn())
    new, _ = await HookRunner(second).run("data", new_conn())
    assert (old.message, new.message) == (("first",), ("second!",))
    assert type(first.plugins[0]) is not type(second.plugins[0])
