from pathlib import Path

from mars_core.config import describe_defaults

ROOT = Path(__file__).resolve().parents[1]
HEADER = "# Configuration reference\n\nEvery option with its default, as `mars config --defaults` prints it.\n\n"


def render_reference() -> str:
    return f"{HEADER}```yaml\n{describe_defaults()}```\n"


def test_configuration_reference_is_current():
    path = ROOT / "docs" / "configuration.md"
    assert path.read_text() == render_reference(), (
        "docs/configuration.md is out of date; regenerate it with "
        "`python -c 'from tests.test_docs import render_reference; print(render_reference(), end=\"\")' > docs/configuration.md`"
    )
