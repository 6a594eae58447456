"""Our Moebius student against the authors' own implementation, side by side in one process.

    python scripts/compare_authors.py --authors-code PATH [--size 512] [--batches 1,2]
        [--dtypes float32,bfloat16] [--threads 2] [--repeats 3]
        [--out docs/bench/authors-side-by-side]

PATH is a clone of https://github.com/hustvl/Moebius. Both students are built from the authors'
``config/model_cfg/moebius.yaml`` for the same image size and given the same random weights
(seeded normal weights, BatchNorm statistics away from the identity); the script checks that
their noise predictions agree, then times one denoising step of each in turns (A B C A B C …,
after a warm-up call each): theirs in float32 and in bfloat16 (bfloat16 weights under autocast,
the usual way to run a diffusers model in reduced precision), ours in float32 and bfloat16 as
``moebius inpaint --dtype`` runs it (``--dtypes float32`` on CPUs without native bfloat16, where
neither would run in it). Same process, threads, inputs and allocator settings for
all. Writes ``compare.json`` (medians, every run, the ratios, the output check, the machine).

The Python running it needs moebius and the authors' inference dependencies (diffusers, einops,
timm, pyyaml, omegaconf). Their model modules import torchvision and accelerate at the top
without using them for inference, and timm's package imports torchvision: where those are not
installed, empty stand-ins are put in their place (torchvision wheels pin their own torch).
"""

import argparse
import contextlib
import copy
import importlib
import importlib.abc
import importlib.util
import io
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import yaml

import moebius
from moebius.allocator import keep_freed_memory
from moebius.bench.runner import machine_info
from moebius.files import write_json
from moebius.models.lcg import category_ids
from moebius.nn import engines
from moebius.runtime import autocast

SCHEMA = "moebius-compare-authors/1"
# Our float32 prediction must equal theirs to float32 rounding, relative to its largest value.
EQUAL_WITHIN = 1e-5
# Imported at the top of their modules, unused by the student at inference (transformers and
# fla by the teacher, which their model package imports too).
UNUSED_IMPORTS = ("torchvision", "accelerate", "transformers", "fla")
AUTHORS_CONFIG = Path("config/model_cfg/moebius.yaml")
TIMESTEP = 500
WEIGHT_STD = 0.02  # of the random weights: activations stay in a trained network's range


class _StandInType(type):
    """Any attribute of a stand-in is another stand-in, so import-time uses resolve."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandInType(name, (), {})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandInType(name, (), {})


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook that answers for absent packages with empty modules."""

    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.roots:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def import_authors(code: Path):
    """The authors' ``RemovalModel`` class and builder from a clone of their repository."""
    if not (code / AUTHORS_CONFIG).is_file() or not (code / "model_lib").is_dir():
        sys.exit(f"compare_authors: {code} is not a clone of hustvl/Moebius (no {AUTHORS_CONFIG})")
    absent = {root for root in UNUSED_IMPORTS if importlib.util.find_spec(root) is None}
    if absent:
        sys.meta_path.insert(0, _StandIns(absent))
    sys.path.insert(0, str(code))
    # Their removal/v1_2 package also imports the pipeline and datasets; only the model file.
    spec = importlib.util.spec_from_file_location(
        "authors_removal_model", code / "removal" / "v1_2" / "removal_model.py"
    )
    removal_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(removal_model)
    return removal_model


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded normal weights, and BatchNorm statistics away from the identity (so that folding
    them, as our inference path does, is exercised)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * WEIGHT_STD)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model.eval()


def build_pair(code: Path, size: int, seed: int):
    """(theirs, ours): the same random weights under the same checkpoint keys."""
    with contextlib.redirect_stdout(io.StringIO()):  # their modules print while building
        removal_model = import_authors(code)
        document = yaml.safe_load((code / AUTHORS_CONFIG).read_text())
        document["data"]["image_size"] = size
        theirs = randomise(removal_model.build_removal_model(document), seed)
    ours = moebius.build_model(str(code / AUTHORS_CONFIG), image_size=size)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours.eval().fuse()


def _step(model: torch.nn.Module, dtype: torch.dtype, inputs: tuple):
    """One denoising step, as ``moebius inpaint --dtype`` and the bench run it."""

    def run() -> torch.Tensor:
        quiet = contextlib.redirect_stdout(io.StringIO())  # their forward prints too
        with quiet, torch.inference_mode(), autocast(torch.device("cpu"), dtype):
            return model(*inputs).sample.float()

    return run


def _inputs(batch: int, size: int, seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed + batch)
    x = torch.randn(batch, 9, size // 8, size // 8, generator=generator)
    half = batch - batch // 2  # batch 2 is the CFG pair, as in the sampler
    ids = torch.cat([category_ids("foreground", half), category_ids("background", batch - half)])
    return x, torch.full((batch,), TIMESTEP), ids


def _checks(outputs: dict, batch: int) -> list[dict]:
    """Every prediction against the authors' float32 one."""
    reference = outputs[("authors", "float32")]
    scale = reference.abs().max().item()
    rows = []
    for (model, dtype), out in outputs.items():
        if (model, dtype) != ("authors", "float32"):
            error = (out - reference).abs()
            rows.append(
                {
                    "batch": batch,
                    "model": model,
                    "dtype": dtype,
                    "max_abs_vs_authors_float32": error.max().item(),
                    "max_rel_vs_authors_float32": error.max().item() / scale,
                    "mean_abs_vs_authors_float32": error.mean().item(),
                }
            )
    return rows


def compare(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # what moebius does on the CPU; process-wide, so for both
    theirs, ours = build_pair(Path(args.authors_code), args.size, args.seed)
    models = {("authors", "float32"): theirs, ("ours", "float32"): ours}
    if "bfloat16" in args.dtypes:
        models[("authors", "bfloat16")] = copy.deepcopy(theirs).to(torch.bfloat16)
        models[("ours", "bfloat16")] = copy.deepcopy(ours).to(torch.bfloat16)
    results, checks = [], []
    for batch in args.batches:
        inputs = _inputs(batch, args.size, args.seed)
        runs = {key: _step(model, getattr(torch, key[1]), inputs) for key, model in models.items()}
        checks += _checks({key: run() for key, run in runs.items()}, batch)  # also the warm-up
        times = {key: [] for key in runs}
        for _ in range(args.repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        for (model, dtype), seconds in times.items():
            median = 1000 * statistics.median(seconds)
            results.append(
                {
                    "model": model,
                    "dtype": dtype,
                    "batch": batch,
                    "median_ms": median,
                    "runs_ms": [round(1000 * s, 3) for s in seconds],
                }
            )
            print(f"{model:8s} {dtype:9s} batch {batch}: {median:8.1f} ms/step", file=sys.stderr)
    return {"results": results, "checks": checks}


def ratios(results: list[dict]) -> list[dict]:
    """Authors' median time over ours, per batch: how many times faster ours is."""
    by = {(r["model"], r["dtype"], r["batch"]): r["median_ms"] for r in results}
    rows = []
    for batch in sorted({r["batch"] for r in results}):
        for ours_dtype, authors_dtype in (
            ("float32", "float32"),
            ("bfloat16", "float32"),
            ("bfloat16", "bfloat16"),
        ):
            ours, authors = (
                by.get(("ours", ours_dtype, batch)),
                by.get(("authors", authors_dtype, batch)),
            )
            if ours and authors:
                rows.append(
                    {
                        "batch": batch,
                        "ours": ours_dtype,
                        "authors": authors_dtype,
                        "speedup": authors / ours,
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-code", required=True, help="a clone of hustvl/Moebius")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    parser.add_argument("--batches", default="1,2", help="batch sizes; 2 is one CFG step (1,2)")
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="precisions to time; float32 always runs, as the reference (float32,bfloat16)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (3)")
    parser.add_argument("--seed", type=int, default=1, help="of the random weights and inputs")
    parser.add_argument("--out", default="docs/bench/authors-side-by-side", help="folder")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    dtypes = {d.strip() for d in args.dtypes.split(",") if d.strip()}
    if not dtypes <= {"float32", "bfloat16"}:
        sys.exit("compare_authors: --dtypes takes float32 and bfloat16")
    args.dtypes = ["float32", *(["bfloat16"] if "bfloat16" in dtypes else [])]
    if args.size % 64 or args.size < 64:
        sys.exit("compare_authors: --size must be a multiple of 64 pixels")
    found = compare(args)
    command = "python scripts/compare_authors.py --authors-code PATH " + " ".join(
        [
            f"--size {args.size}",
            f"--batches {','.join(map(str, args.batches))}",
            f"--dtypes {','.join(args.dtypes)}",
            f"--threads {args.threads}",
            f"--repeats {args.repeats}",
            f"--out {args.out}",
        ]
    )
    report = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "machine": machine_info(torch.device("cpu")),
        "settings": {
            "size": args.size,
            "batches": args.batches,
            "dtypes": args.dtypes,
            "threads": args.threads,
            "repeats": args.repeats,
            "seed": args.seed,
            "timestep": TIMESTEP,
            "weight_std": WEIGHT_STD,
        },
        "engines": engines.report(),
        **found,
        "ratios": ratios(found["results"]),
    }
    same = [
        c["max_rel_vs_authors_float32"]
        for c in found["checks"]
        if (c["model"], c["dtype"]) == ("ours", "float32")
    ]
    report["outputs_equal"] = all(error <= EQUAL_WITHIN for error in same)
    write_json(Path(args.out) / "compare.json", report)
    for r in report["ratios"]:
        print(
            f"batch {r['batch']}: ours {r['ours']} is {r['speedup']:.2f}× the authors' "
            f"{r['authors']} speed"
        )
    print(f"wrote {Path(args.out) / 'compare.json'}")
    if not report["outputs_equal"]:
        print(f"compare_authors: outputs differ: relative {max(same):.2e} > {EQUAL_WITHIN}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
