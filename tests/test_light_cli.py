"""What needs no Prefect imports none: `gptimg --help` answers in a fraction of a second instead
of the 2-3 s Prefect's import takes, and Prefect still finds the blocks when it looks for them
(its collections entry point, `prefect block register -m gptimg_flows`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

NO_PREFECT = """
import sys
from gptimg_flows.cli import main
sys.argv = ["gptimg", *{args!r}]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
assert not loaded, loaded[:5]
"""


def _fresh_python(code: str) -> str:
    """Run `code` in a new interpreter (nothing imported yet); its stdout, once it passed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("args", [["--help"], ["estimate", "--help"], ["batch", "--help"]])
def test_help_imports_no_prefect(args: list[str]) -> None:
    assert "Usage: gptimg" in _fresh_python(NO_PREFECT.format(args=args))


def test_the_package_imports_lazily_and_still_names_everything() -> None:
    code = (
        "import sys, gptimg_flows\n"
        "assert 'prefect' not in sys.modules\n"
        "assert set(gptimg_flows.__all__) <= set(dir(gptimg_flows))\n"
        "from gptimg_flows import batch_generate, OpenAIImageCredentials\n"
        "assert batch_generate.name == 'batch-generate', batch_generate.name\n"
        "assert gptimg_flows.RowsFailed.__module__ == 'gptimg_flows.results'\n"
        "try:\n"
        "    gptimg_flows.nothing_here\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    _fresh_python(code)


def test_prefect_finds_the_blocks_through_its_collections_and_register() -> None:
    code = (
        "import inspect, gptimg_flows\n"
        "from prefect.plugins import load_prefect_collections\n"
        "from prefect.blocks.core import Block\n"
        "from prefect.utilities.dispatch import get_registry_for_type\n"
        "assert not isinstance(load_prefect_collections()['gptimg_flows'], Exception)\n"
        "names = set(get_registry_for_type(Block))\n"
        "assert {'gptimg-openai-credentials', 'gptimg-image-archive', "
        "'gptimg-provider-route'} <= names, names\n"
        # what `prefect block register -m gptimg_flows` walks
        "found = [n for n, c in inspect.getmembers(gptimg_flows) if Block.is_block_class(c)]\n"
        "assert 'OpenAIImageCredentials' in found and 'ProviderRoute' in found, found\n"
    )
    _fresh_python(code)
