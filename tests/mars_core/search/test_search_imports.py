import subprocess
import sys


def test_search_imports_without_torch_prefect_or_mlflow():
    code = (
        "import sys\n"
        "import mars_core.search\n"
        "import mars_core.search.plots\n"
        "import mars_core.search.synthetic\n"
        "heavy = [name for name in ('torch', 'prefect', 'mlflow') if name in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
