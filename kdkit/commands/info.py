"""``kdkit info``: versions, the compiled extension, devices and the plugins found."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the information as JSON")


def _extension_info() -> dict[str, Any]:
    info: dict[str, Any] = {"loaded": False, "cpu_isa": None, "cpu_threaded": False, "cuda_compiled": False,
                            "error": None}
    try:
        from kdkit.ops import extension_info
    except Exception as exc:  # noqa: BLE001 - kdkit.ops absent or broken: report, don't die
        info["error"] = f"kdkit.ops unavailable: {type(exc).__name__}: {exc}"
        return info
    try:
        reported = dict(extension_info())
    except Exception as exc:  # noqa: BLE001
        info["error"] = f"kdkit.ops.extension_info() failed: {type(exc).__name__}: {exc}"
        return info
    info.update(reported)
    return info


def collect() -> dict[str, Any]:
    """Everything ``kdkit info --json`` prints."""
    import kdkit

    data: dict[str, Any] = {
        "version": kdkit.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "executable": sys.executable,
    }
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        data.update(torch=None, torch_cuda=None, cuda_available=False, cuda_devices=[],
                    torch_error=f"{type(exc).__name__}: {exc}")
    else:
        cuda_available = bool(torch.cuda.is_available())
        data.update(
            torch=torch.__version__,
            torch_cuda=torch.version.cuda,
            cuda_available=cuda_available,
            cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda_available else [],
            num_threads=torch.get_num_threads(),
        )
    from kdkit.runtime import describe

    data["openmp"], data["allocator"] = describe()
    data["extension"] = _extension_info()
    from kdkit.errors import KdkitError
    from kdkit.plugins import get_plugin_manager

    try:
        manager = get_plugin_manager()
        data["plugins"] = [info.to_dict() for info in manager.plugin_info(include_internal=False)]
        data["plugin_failures"] = [f.__dict__ for f in manager.failures]
    except KdkitError as exc:  # e.g. two plugins registering one name: still show the rest
        data["plugins"] = []
        data["plugins_error"] = str(exc)
    return data


def run(args: argparse.Namespace) -> int:
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    ext = data["extension"]
    if ext.get("loaded"):
        ext_line = (f"loaded (cpu isa: {ext.get('cpu_isa') or '?'}, "
                    f"cpu threads: {'yes' if ext.get('cpu_threaded') else 'NO (built without OpenMP)'}, "
                    f"cuda kernels: {'yes' if ext.get('cuda_compiled') else 'no'})")
    else:
        ext_line = f"not loaded, reference implementation in use ({ext.get('error') or 'no reason given'})"
    cuda = "yes: " + ", ".join(data["cuda_devices"]) if data["cuda_available"] else "no"
    print(f"kdkit:      {data['version']}")
    print(f"python:     {data['python']} ({data['executable']})")
    print(f"platform:   {data['platform']}")
    print(f"torch:      {data['torch']} (cuda build: {data.get('torch_cuda') or 'none'})")
    print(f"cuda:       {cuda}")
    print(f"extension:  {ext_line}")
    print(f"openmp:     {data['openmp']}")
    print(f"allocator:  {data['allocator']}")
    if "plugins_error" in data:
        print(f"plugins:    error: {data['plugins_error']}")
    elif data["plugins"]:
        print("plugins:    " + ", ".join(f"{p['name']} {p['version']}" for p in data["plugins"]))
    else:
        print("plugins:    none")
    return 0
