"""jupyter_kernel_test's suite, run the same against ipykernel directly and through the proxy."""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import jupyter_kernel_test

from .spec_helpers import direct, proxied, write_spec


class IPythonSamples(jupyter_kernel_test.KernelTests):
    """The samples jupyter_kernel_test needs for a Python kernel."""

    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")  # "range" fails against ipykernel itself
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"
    support_iopub_welcome = True

    spec: dict = {}
    _env_names = ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")

    @classmethod
    def setUpClass(cls) -> None:
        """Start the kernel from a spec in private Jupyter folders (before any fixture runs)."""
        cls._saved_env = {name: os.environ.get(name) for name in cls._env_names}
        cls._root = Path(tempfile.mkdtemp(prefix="kernel-test-"))
        for name in cls._env_names:
            os.environ[name] = str(cls._root / name.lower())
        write_spec(cls._root / "jupyter_path" / "kernels", cls.kernel_name, cls.spec)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        for name, value in cls._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(cls._root, ignore_errors=True)


class TestDirectIPython(IPythonSamples):
    kernel_name = "direct"
    spec = direct()


class TestProxiedIPython(IPythonSamples):
    kernel_name = "proxied"
    spec = proxied()


del IPythonSamples

if __name__ == "__main__":
    unittest.main()
