"""Engine builds and venvs in the cache, keyed by the pins in deploy/pins.py.

    >>> from deploy.engines import builds as engines
    >>> engines.llama_cpp_layout().server.name
    'llama-server'
    >>> engines.parser_venv_dir().name
    'parsers-vllm0.33.0-sglang0.5.23'

Layout under ``constants.CACHE_DIR``:

- ``engines/llama.cpp/<llama-cpp-python version>-<variant>-rpc/bin/{llama-server,rpc-server}`` plus
  ``templates/`` (the chat templates vendored in the same sdist) and ``BUILD_INFO.json``. The variant names
  the build (LlamaCppBuild): ``cpu`` (portable, the demo's and CI's), ``cpu-avx512-bf16-amx`` (a node's
  ISA), ``cpu-native``, ``cuda-sm89`` (the GPUs' compute capability), ``cuda-sm89-avx512`` (both).
- ``venvs/parsers-vllm<V>-sglang<V>/``: vLLM and SGLang installed ``--no-deps`` with the few pure-Python
  packages their argument parsers import and the CPU torch wheel; used to validate rendered commands.

Every install builds in a temporary directory beside its destination and renames it into place at the end,
so a killed build never looks complete; a finished one is reused (checked by running it, not by its presence).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import constants, pins
from deploy.errors import InputError, KimiDeployError
from deploy.fsutil import atomic_write_json

Progress = Callable[[str], None]

#: The parser-time imports of vLLM and SGLang beyond the engines themselves, found by importing their
#: parsers in an empty venv until nothing was missing. Pinned so the venv is the same on every machine;
#: transformers/tokenizers/fastapi/openai sit inside the ranges both engines declare.
PARSER_VENV_DEPS: tuple[str, ...] = (
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiosignal==1.4.0",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "apache-tvm-ffi==0.1.11",
    "attrs==26.1.0",
    "cachetools==8.0.1",
    "cbor2==6.3.0",
    "certifi==2026.10.18",
    "charset-normalizer==3.5.2",
    "click==8.5.1",
    "cloudpickle==3.1.2",
    "distro==1.9.0",
    "fastapi==0.136.3",
    "frozenlist==1.8.0",
    "h11==0.16.0",
    "httpcore==1.0.9",
    "httpcore2==2.16.2",
    "httpx==0.28.1",
    "httpx2==2.16.2",
    "huggingface_hub==2.4.0",
    "idna==3.20",
    "ipython==9.18.1",
    "llguidance==1.9.1",
    "msgspec==0.22.0",
    "multidict==7.2.1",
    "numpy==2.4.6",
    "openai==2.54.0",
    "openai-harmony==0.0.8",
    "orjson==3.13.0",
    "packaging==26.3",
    "partial-json-parser==0.2.1.1.post7",
    "pillow==13.0.0",
    "prometheus_client==0.26.0",
    "propcache==0.5.4",
    "psutil==7.2.2",
    "py-cpuinfo==9.0.0",
    "pybase64==1.5.1",
    "pydantic==2.14.3",
    "pydantic_core==2.50.4",
    "Pygments==2.21.0",
    "PyYAML==6.0.3",
    "pyzmq==27.3.0",
    "regex==2026.11.15",
    "requests==2.34.2",
    "safetensors==0.8.0",
    "sniffio==1.3.1",
    "starlette==1.10.0",
    "tokenizers==0.23.2",
    "tqdm==4.70.1",
    "traitlets==5.16.1",
    "transformers==5.19.0",
    "triton==3.9.0",
    "truststore==0.10.5",
    "typing-inspection==0.4.5",
    "urllib3==2.8.0",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "watchfiles==1.3.0",
    "yarl==1.25.1",
)
#: torch's own requirements, installed beside it with --no-deps so no CUDA wheel (nvidia-*) is ever pulled.
TORCH_DEPS: tuple[str, ...] = (
    "filelock==4.2.11",
    "fsspec==2026.9.0",
    "Jinja2==3.1.6",
    "MarkupSafe==3.0.4",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "sympy==1.14.0",
    "typing_extensions==4.16.0",
)

#: cmake options of the llama.cpp build: portable (no -march=native), offline (no web UI download), static,
#: server and RPC only.
LLAMA_CPP_CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_RPC=ON",
)
#: Inventory ISA flags (/proc/cpuinfo names) -> the ggml CPU option each enables and its tag in the cache key
#: (llama.cpp ggml/CMakeLists.txt: GGML_AVX512*, GGML_AVX_VNNI, GGML_AMX_*, all OFF unless GGML_NATIVE=ON).
#: The portable build (GGML_NATIVE=OFF alone) already has AVX, AVX2, FMA, F16C and BMI2.
GGML_ISA_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("avx512f", "GGML_AVX512", "avx512"),
    ("avx512_vbmi", "GGML_AVX512_VBMI", "vbmi"),
    ("avx512_vnni", "GGML_AVX512_VNNI", "vnni"),
    ("avx512_bf16", "GGML_AVX512_BF16", "bf16"),
    ("avx_vnni", "GGML_AVX_VNNI", "avxvnni"),
    ("amx_tile", "GGML_AMX_TILE", "amx"),
    ("amx_int8", "GGML_AMX_INT8", "amx"),
    ("amx_bf16", "GGML_AMX_BF16", "amx"),
)
#: build targets -> installed names (the RPC server's target is ggml-rpc-server in this llama.cpp tree).
LLAMA_CPP_TARGETS: dict[str, str] = {"llama-server": "llama-server", "ggml-rpc-server": "rpc-server"}
LLAMA_CPP_SDIST = f"llama_cpp_python-{pins.LLAMA_CPP_PYTHON_VERSION}"


class EngineInstallError(KimiDeployError):
    """An engine build or venv install failed; the message names the step and its log."""

    exit_code = 1


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


# ---------------------------------------------------------------------------------------------- llama.cpp


@dataclass(frozen=True)
class LlamaCppBuild:
    """Which llama.cpp build a node runs: the portable CPU build (the default, the demo's and CI's), CUDA
    for the GPUs' compute capabilities, and/or the CPU's instruction sets, or ``native`` (GGML_NATIVE=ON:
    whatever the machine that compiles it has, so only when the node builds for itself).

        >>> LlamaCppBuild(cuda_architectures=("89",), cpu_isa=("avx2", "avx512f", "avx512_bf16")).key
        '0.3.36-cuda-sm89-avx512-bf16-rpc'
        >>> LlamaCppBuild(cpu_isa=("avx512f", "amx_tile", "amx_int8")).cmake_flags()[-3:]
        ['-DGGML_AVX512=ON', '-DGGML_AMX_TILE=ON', '-DGGML_AMX_INT8=ON']
        >>> LlamaCppBuild().key
        '0.3.36-cpu-rpc'
    """

    cuda_architectures: tuple[str, ...] = ()
    #: inventory ISA flags; only those in GGML_ISA_OPTIONS change the build
    cpu_isa: tuple[str, ...] = ()
    native: bool = False
    #: CUDA for the architectures CMake picks itself (the older `engine install llama.cpp --cuda`)
    cuda_default_arch: bool = False

    def __post_init__(self) -> None:
        for arch in self.cuda_architectures:
            if not arch.isdigit():
                raise InputError(f"CUDA architecture {arch!r}: expected digits such as 89 or 100")
        unknown = [f for f in self.cpu_isa if not f.replace("_", "").isalnum()]
        if unknown:
            raise InputError(f"CPU ISA flags {unknown}: expected /proc/cpuinfo names such as avx512f")

    @classmethod
    def from_plan(cls, spec: dict[str, object] | None) -> LlamaCppBuild:
        """The build a plan's ``engine_args.builds[<node>]`` describes (missing: the portable build)."""
        spec = spec or {}
        if spec.get("portable", True) and not spec.get("cuda_architectures"):
            return cls()
        return cls(
            cuda_architectures=tuple(str(a) for a in spec.get("cuda_architectures") or ()),  # type: ignore[union-attr]
            cpu_isa=tuple(str(f) for f in spec.get("cpu_isa") or ()),  # type: ignore[union-attr]
            native=bool(spec.get("native", False)),
        )

    @property
    def cuda(self) -> bool:
        return bool(self.cuda_architectures) or self.cuda_default_arch

    @property
    def ggml_isa(self) -> list[str]:
        """The ggml options this build turns on for its CPU (none for native or portable builds)."""
        if self.native:
            return []
        have = set(self.cpu_isa)
        return [opt for flag, opt, _tag in GGML_ISA_OPTIONS if flag in have]

    @property
    def variant(self) -> str:
        """``cpu``, ``cpu-native``, ``cpu-avx512-bf16-amx``, ``cuda-sm89``, ``cuda-sm89-avx512``, ``cuda``."""
        parts = ["cuda" if self.cuda else "cpu"]
        parts += [f"sm{a}" for a in self.cuda_architectures]
        if self.native:
            parts.append("native")
        have = set(self.cpu_isa)
        for flag, _opt, tag in GGML_ISA_OPTIONS:
            if flag in have and not self.native and tag not in parts:
                parts.append(tag)
        return "-".join(parts)

    @property
    def key(self) -> str:
        return f"{pins.LLAMA_CPP_PYTHON_VERSION}-{self.variant}-rpc"

    def cmake_flags(self) -> list[str]:
        """The cmake options of this build: the portable base, then native/ISA and CUDA options."""
        flags = [f for f in LLAMA_CPP_CMAKE_FLAGS if not (self.native and f == "-DGGML_NATIVE=OFF")]
        if self.native:
            flags.append("-DGGML_NATIVE=ON")
        if self.cuda:
            flags.append("-DGGML_CUDA=ON")
        if self.cuda_architectures:
            flags.append(f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(self.cuda_architectures)}")
        flags += [f"-D{opt}=ON" for opt in self.ggml_isa]
        return flags

    def cli_args(self) -> list[str]:
        """The `kimi-deploy engine install llama.cpp` options that select this build."""
        args: list[str] = []
        for arch in self.cuda_architectures:
            args += ["--cuda-arch", arch]
        if self.cuda_default_arch and not self.cuda_architectures:
            args.append("--cuda")
        if self.native:
            args.append("--native")
        elif self.ggml_isa:
            have = set(self.cpu_isa)
            args += ["--isa", ",".join(f for f, _o, _t in GGML_ISA_OPTIONS if f in have)]
        return args


@dataclass(frozen=True)
class LlamaCppLayout:
    """Where one llama.cpp build lives in the cache."""

    root: Path
    cuda: bool
    build: LlamaCppBuild = LlamaCppBuild()

    @property
    def key(self) -> str:
        return self.root.name

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def rpc_server(self) -> Path:
        return self.bin_dir / "rpc-server"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def build_info(self) -> Path:
        return self.root / "BUILD_INFO.json"


def _build(cuda: bool, build: LlamaCppBuild | None) -> LlamaCppBuild:
    return build if build is not None else LlamaCppBuild(cuda_default_arch=cuda)


def llama_cpp_key(cuda: bool = False, build: LlamaCppBuild | None = None) -> str:
    """Cache key of a llama.cpp build: ``0.3.36-cpu-rpc`` (portable), ``0.3.36-cuda-sm89-rpc``, ..."""
    return _build(cuda, build).key


#: The cache folder of llama.cpp builds, relative to the cache root (launch scripts find it on their node).
LLAMA_CPP_CACHE_SUBDIR = "engines/llama.cpp"


def llama_cpp_layout(
    cuda: bool = False, cache_dir: Path | None = None, build: LlamaCppBuild | None = None
) -> LlamaCppLayout:
    """The cache layout of the pinned llama.cpp build (it may not be built yet)."""
    b = _build(cuda, build)
    base = (cache_dir or constants.CACHE_DIR) / LLAMA_CPP_CACHE_SUBDIR
    return LlamaCppLayout(root=base / b.key, cuda=b.cuda, build=b)


def installed_llama_cpp_builds(cache_dir: Path | None = None) -> list[LlamaCppLayout]:
    """Every llama.cpp build of the pin in the cache (portable, per-node CUDA/ISA variants), by key."""
    base = (cache_dir or constants.CACHE_DIR) / LLAMA_CPP_CACHE_SUBDIR
    return [
        LlamaCppLayout(root=d, cuda="-cuda" in d.name)
        for d in sorted(base.glob(f"{pins.LLAMA_CPP_PYTHON_VERSION}-*-rpc"))
        if (d / "bin" / "llama-server").is_file()
    ]


def llama_server_path(cuda: bool = False) -> Path:
    """Where the cached llama-server is (or will be after `kimi-deploy engine install llama.cpp`)."""
    return llama_cpp_layout(cuda).server


def llama_cpp_version(binary: Path) -> str | None:
    """``binary --version`` output, or None when the binary is missing or does not run."""
    if not binary.is_file():
        return None
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    # llama.cpp prints its version banner on stderr
    return (out.stdout + out.stderr).strip() or "unknown"


def llama_cpp_ready(layout: LlamaCppLayout) -> bool:
    """True when both binaries are in place and the server answers ``--version``."""
    return layout.rpc_server.is_file() and llama_cpp_version(layout.server) is not None


def llama_cpp_download_command(dest: Path) -> list[str]:
    """pip command that fetches the pinned llama-cpp-python sdist (which vendors llama.cpp) into ``dest``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--dest",
        str(dest),
        f"llama-cpp-python=={pins.LLAMA_CPP_PYTHON_VERSION}",
    ]


def llama_cpp_configure_command(
    source_dir: Path, build_dir: Path, cuda: bool = False, build: LlamaCppBuild | None = None
) -> list[str]:
    """cmake configure command for the llama.cpp tree at ``source_dir``."""
    flags = _build(cuda, build).cmake_flags()
    return ["cmake", "-S", str(source_dir), "-B", str(build_dir), "-G", "Ninja", *flags]


def llama_cpp_build_command(build_dir: Path, jobs: int | None = None) -> list[str]:
    """cmake build command for the server and RPC targets, one job per core by default."""
    jobs = jobs or os.cpu_count() or 1
    return ["cmake", "--build", str(build_dir), "--target", *LLAMA_CPP_TARGETS, "-j", str(jobs)]


def _run_logged(cmd: list[str], log: Path, step: str, progress: Progress | None, every: int = 20) -> None:
    """Run ``cmd`` with output appended to ``log``; echo ninja's ``[n/m]`` counter every ``every`` steps."""
    _say(progress, f"{step}: {' '.join(cmd)}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        count = 0
        for line in proc.stdout:
            fh.write(line)
            if line.startswith("["):
                count += 1
                if count % every == 0:
                    _say(progress, f"  {line.split(' ', 1)[0]} {step}")
        rc = proc.wait()
    if rc != 0:
        raise EngineInstallError(f"{step} failed (exit {rc}); see {log}")


def _find_sdist(directory: Path) -> Path:
    found = sorted(directory.glob(f"{LLAMA_CPP_SDIST}.tar.gz"))
    if not found:
        raise EngineInstallError(f"no {LLAMA_CPP_SDIST}.tar.gz in {directory} after pip download")
    return found[0]


def _extract(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    tree = dest / LLAMA_CPP_SDIST / "vendor" / "llama.cpp"
    if not (tree / "CMakeLists.txt").is_file():
        raise EngineInstallError(f"{sdist}: no vendor/llama.cpp tree inside")
    return tree


def _populate(staging: Path, tree: Path, build_dir: Path, build: LlamaCppBuild) -> None:
    """Copy the built binaries and the vendored templates into ``staging`` and describe the build."""
    bin_dir = staging / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for target, name in LLAMA_CPP_TARGETS.items():
        built = build_dir / "bin" / target
        if not built.is_file():
            raise EngineInstallError(f"{built}: the build did not produce {target}")
        shutil.copy2(built, bin_dir / name)
    templates = staging / "templates"
    templates.mkdir(exist_ok=True)
    for src in sorted((tree / "models" / "templates").glob("*.jinja")):
        shutil.copy2(src, templates / src.name)
    atomic_write_json(
        staging / "BUILD_INFO.json",
        {
            "llama_cpp_python": pins.LLAMA_CPP_PYTHON_VERSION,
            "llama_cpp_commit": pins.LLAMA_CPP_COMMIT,
            "cuda": build.cuda,
            "variant": build.variant,
            "cmake_flags": build.cmake_flags(),
            "targets": LLAMA_CPP_TARGETS,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": os.uname().nodename,
        },
    )


def _finish(staging: Path, final: Path) -> None:
    """Rename ``staging`` over ``final``; what was at ``final`` (an unusable earlier attempt) goes first."""
    if final.exists():
        shutil.rmtree(final)
    # mkdtemp made it 0700; engines run as other users too (systemd units, Ansible become_user)
    staging.chmod(0o755)
    os.replace(staging, final)


def ensure_venv(
    final: Path,
    label: str,
    steps: Sequence[tuple[str, Callable[[Path], list[str]]]],
    problem: Callable[[Path], str | None],
    progress: Progress | None,
    force: bool = False,
) -> Path:
    """The venv at ``final`` when ``problem(final)`` finds nothing wrong (and not ``force``); otherwise build
    it at a temporary sibling, run ``steps`` (label, command for the staging path) with their output in
    ``build-logs/<name>.log``, and rename it into place only when ``problem(staging)`` finds nothing wrong:
    an interrupted or broken build never looks finished.

    The venv's python finds its prefix from the pyvenv.cfg beside it, so the renamed venv works; console
    scripts keep the staging path in their shebang, so run its tools as ``python -m``.

    >>> steps = [("create venv", lambda v: ["python3", "-m", "venv", str(v)])]
    >>> ensure_venv(Path("/c/venvs/x"), "x venv", steps, lambda v: None, print)  # doctest: +SKIP
    x venv: installed at /c/venvs/x
    PosixPath('/c/venvs/x')
    """
    if not force and problem(final) is None:
        _say(progress, f"{label}: cached at {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    log = constants.CACHE_DIR / "build-logs" / f"{final.name}.log"
    try:
        shutil.rmtree(staging)
        for step, command in steps:
            _run_logged(command(staging), log, step, progress)
        _say(progress, f"checking the {label}")
        found = problem(staging)
        if found:
            raise EngineInstallError(f"{found}; see {log}")
        _finish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _say(progress, f"{label}: installed at {final}")
    return final


def install_llama_cpp(
    cuda: bool = False,
    jobs: int | None = None,
    progress: Progress | None = print,
    from_tree: Path | None = None,
    force: bool = False,
    build: LlamaCppBuild | None = None,
) -> LlamaCppLayout:
    """Build the pinned llama-server and rpc-server into the cache, or reuse a working build.

        >>> install_llama_cpp().server  # doctest: +SKIP
        PosixPath('/root/.cache/kimi-deploy/engines/llama.cpp/0.3.36-cpu-rpc/bin/llama-server')

    ``from_tree`` adopts an already-built llama.cpp tree of the same pin (its ``build/bin`` must hold both
    targets) instead of compiling again.
    """
    layout = llama_cpp_layout(cuda, build=build)
    if not force and llama_cpp_ready(layout):
        _say(progress, f"llama.cpp {layout.key}: cached at {layout.root}")
        return layout
    for tool in ("cmake", "ninja") if from_tree is None else ():
        if shutil.which(tool) is None:
            raise EngineInstallError(
                f"{tool} not found on PATH: install it (apt-get install cmake ninja-build)"
            )
    layout.root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{layout.key}.", suffix=".tmp", dir=layout.root.parent))
    log = constants.CACHE_DIR / "build-logs" / f"llama.cpp-{layout.key}.log"
    try:
        if from_tree is not None:
            tree = from_tree.expanduser().resolve()
            if not (tree / "CMakeLists.txt").is_file():
                raise InputError(f"{tree}: not a llama.cpp source tree (no CMakeLists.txt)")
            build_dir = tree / "build"
            _say(progress, f"llama.cpp {layout.key}: adopting the build in {build_dir}")
        else:
            src = staging / "src"
            _run_logged(llama_cpp_download_command(src), log, "download sdist", progress)
            _say(progress, "extracting the sdist")
            tree = _extract(_find_sdist(src), src)
            build_dir = tree / "build"
            _run_logged(
                llama_cpp_configure_command(tree, build_dir, build=layout.build), log, "configure", progress
            )
            _say(progress, f"building llama-server and rpc-server (about 13 min on 2 cores); log: {log}")
            _run_logged(llama_cpp_build_command(build_dir, jobs), log, "build", progress)
        _populate(staging, tree, build_dir, layout.build)
        if from_tree is None:
            # the sources and objects are large; the sdist stays for provenance
            shutil.rmtree(staging / "src" / LLAMA_CPP_SDIST, ignore_errors=True)
        _finish(staging, layout.root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not llama_cpp_ready(layout):
        raise EngineInstallError(f"{layout.server}: installed but `--version` does not run")
    _say(progress, f"llama.cpp {layout.key}: installed at {layout.root}")
    return layout


# -------------------------------------------------------------------------------------------- parser venv
# The upstream engines' parsers (vLLM + SGLang) in one venv; kvcache-ai's SGLang fork (`sglang-kt`, the server
# KTransformers launches) in another (kt_parser_venv_dir says why).


def parser_venv_key() -> str:
    return f"parsers-vllm{pins.VLLM_VERSION}-sglang{pins.SGLANG_VERSION}"


def parser_venv_dir(cache_dir: Path | None = None) -> Path:
    """Where the venv with the real vLLM and SGLang argument parsers lives."""
    return (cache_dir or constants.CACHE_DIR) / "venvs" / parser_venv_key()


def parser_python(cache_dir: Path | None = None) -> Path:
    return parser_venv_dir(cache_dir) / "bin" / "python"


def parser_venv_packages() -> list[str]:
    """Everything the parser venv installs, each pinned; the engines' versions come from deploy/pins.py."""
    return [
        f"vllm=={pins.VLLM_VERSION}",
        f"sglang=={pins.SGLANG_VERSION}",
        f"xgrammar=={pins.XGRAMMAR_VERSION}",
        f"torch=={pins.TORCH_CPU_VERSION}",
        *TORCH_DEPS,
        *PARSER_VENV_DEPS,
    ]


def parser_venv_install_commands(venv: Path) -> list[list[str]]:
    """The commands that build the parser venv at ``venv``; all installs are --no-deps, so nothing
    (a CUDA torch, nvidia-* wheels) arrives that is not listed."""
    return [command(venv) for _label, command in _parser_venv_steps()]


def _parser_venv_steps() -> list[tuple[str, Callable[[Path], list[str]]]]:
    packages = parser_venv_packages()
    return [
        ("create venv", lambda v: [sys.executable, "-m", "venv", str(v)]),
        (
            f"pip install {len(packages)} packages --no-deps",
            lambda v: [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", *packages],
        ),
    ]


#: Imports the parser venv must satisfy, and the versions it must hold (checked in the venv's python).
_PARSER_VENV_CHECK = """
import importlib.metadata as m, os, sys
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
want = dict(vllm=sys.argv[1], sglang=sys.argv[2], xgrammar=sys.argv[3])
got = {k: m.version(k) for k in want}
assert got == want, f"versions {got} != {want}"
import torch
assert torch.version.cuda is None, "a CUDA torch is installed"
import vllm.entrypoints.cli.serve, sglang.srt.server_args
"""


def parser_venv_ready(venv: Path | None = None) -> bool:
    """True when the venv imports both engines' argument parsers at the pinned versions on CPU torch."""
    venv = venv or parser_venv_dir()
    py = venv / "bin" / "python"
    if not py.is_file():
        return False
    try:
        out = subprocess.run(
            [
                str(py),
                "-c",
                _PARSER_VENV_CHECK,
                pins.VLLM_VERSION,
                pins.SGLANG_VERSION,
                pins.XGRAMMAR_VERSION,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


#: What the fork's server_args needs beyond the upstream parser venv's packages, each pinned (found by
#: importing ``sglang.srt.server_args`` from the fork in a fresh venv until it loaded).
KT_PARSER_VENV_EXTRA_DEPS: tuple[str, ...] = (
    "dill==0.4.1",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "sentencepiece==0.2.3",
)


def kt_parser_venv_key() -> str:
    return f"parsers-sglang-kt{pins.SGLANG_KT_VERSION}-torch{pins.TORCH_KT_VERSION}"


def kt_parser_venv_dir(cache_dir: Path | None = None) -> Path:
    """Where the venv with kvcache-ai's SGLang fork (``sglang-kt``, the server KTransformers launches) lives.

    It is its own venv because the fork installs as the same ``sglang`` package as upstream, and because its
    server_args imports torchvision, which loads only beside the torch it was built for (a CUDA build; it
    imports on a machine without a GPU): see ``pins.TORCH_KT_VERSION``.
    """
    return (cache_dir or constants.CACHE_DIR) / "venvs" / kt_parser_venv_key()


def kt_parser_python(cache_dir: Path | None = None) -> Path:
    return kt_parser_venv_dir(cache_dir) / "bin" / "python"


def kt_parser_venv_install_commands(venv: Path) -> list[list[str]]:
    """The commands that build the KTransformers parser venv at ``venv``: torch and torchvision with the
    dependencies torch's metadata pins exactly (its CUDA libraries), then the fork and the rest --no-deps."""
    return [command(venv) for _label, command in _kt_parser_venv_steps()]


def _kt_parser_venv_steps() -> list[tuple[str, Callable[[Path], list[str]]]]:
    torch = [f"torch=={pins.TORCH_KT_VERSION}", f"torchvision=={pins.TORCHVISION_KT_VERSION}"]
    fork = [f"sglang-kt=={pins.SGLANG_KT_VERSION}", *PARSER_VENV_DEPS, *KT_PARSER_VENV_EXTRA_DEPS]
    return [
        ("create venv", lambda v: [sys.executable, "-m", "venv", str(v)]),
        (
            "pip install torch and torchvision",
            lambda v: [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", *torch],
        ),
        (
            "pip install the fork --no-deps",
            lambda v: [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", *fork],
        ),
    ]


#: The fork at the pinned version imports, and its parser has the flag the KTransformers guide launches with.
_KT_PARSER_VENV_CHECK = """
import argparse, importlib.metadata as m, sys
got = m.version("sglang-kt")
assert got == sys.argv[1], f"sglang-kt {got} != {sys.argv[1]}"
from sglang.srt.server_args import ServerArgs
parser = argparse.ArgumentParser()
ServerArgs.add_cli_args(parser)
assert any("--kt-gpu-prefill-token-threshold" in a.option_strings for a in parser._actions)
"""


def kt_parser_ready(venv: Path | None = None) -> bool:
    """True when the venv imports the pinned fork's argument parser, with its KT prefill flag."""
    py = (venv or kt_parser_venv_dir()) / "bin" / "python"
    if not py.is_file():
        return False
    try:
        out = subprocess.run(
            [str(py), "-c", _KT_PARSER_VENV_CHECK, pins.SGLANG_KT_VERSION],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def install_kt_parser(progress: Progress | None = print, force: bool = False) -> Path:
    """Build the KTransformers parser venv (about 5.6 GB, a minute or two from a local wheel store) or reuse
    a working one; returns its path.

    >>> install_kt_parser()  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/parsers-sglang-kt0.7.2-torch2.14.1')
    """
    return ensure_venv(
        kt_parser_venv_dir(),
        "KTransformers parser venv",
        _kt_parser_venv_steps(),
        lambda v: None if kt_parser_ready(v) else f"{v}: sglang-kt's server_args does not import",
        progress,
        force,
    )


def install_parser_venv(progress: Progress | None = print, force: bool = False) -> Path:
    """Build the parser venv (about 3.4 GB, a few minutes) or reuse a working one; returns its path.

    >>> install_parser_venv()  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/parsers-vllm0.33.0-sglang0.5.23')
    """
    return ensure_venv(
        parser_venv_dir(),
        "parser venv",
        _parser_venv_steps(),
        lambda v: None if parser_venv_ready(v) else f"{v}: the engines' parsers do not import",
        progress,
        force,
    )


__all__ = [
    "GGML_ISA_OPTIONS",
    "ensure_venv",
    "LLAMA_CPP_CACHE_SUBDIR",
    "EngineInstallError",
    "LlamaCppBuild",
    "LlamaCppLayout",
    "install_llama_cpp",
    "install_kt_parser",
    "installed_llama_cpp_builds",
    "install_parser_venv",
    "kt_parser_python",
    "kt_parser_ready",
    "kt_parser_venv_dir",
    "kt_parser_venv_install_commands",
    "llama_cpp_build_command",
    "llama_cpp_configure_command",
    "llama_cpp_download_command",
    "llama_cpp_key",
    "llama_cpp_layout",
    "llama_cpp_ready",
    "llama_cpp_version",
    "llama_server_path",
    "parser_python",
    "parser_venv_dir",
    "parser_venv_install_commands",
    "parser_venv_packages",
    "parser_venv_ready",
]
