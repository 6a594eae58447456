"""The benchmark loop: interleaved, repeated step timings plus FLOPs, memory, pipeline time,
a per-module profile and the bfloat16 error, all in one process."""

import copy
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from moebius.allocator import keep_freed_memory
from moebius.bench.flops import measured_flops, student_flops
from moebius.bench.measure import (
    Timer,
    matmul_rooflines,
    peak_memory,
    summarize,
)
from moebius.bench.subjects import Subject, build_subjects
from moebius.bench.vae import decoded_difference
from moebius.cpu import cpu_facts
from moebius.models.registry import SDXL_VAE_CONFIG
from moebius.nn import engines
from moebius.nn.adopt import adopt
from moebius.runtime import autocast, bfloat16_conversion_note, synchronize
from moebius.settings import InpaintSettings

SCHEMA = "moebius-bench/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TIMESTEP = 500
OPTIONAL_MODELS = ("pixelhacker",)  # skipped with a note when their preset does not build
PROFILED = ("DWResBlock", "LocalLambda", "InteractiveLambda", "MixFFN", "Downsample", "Upsample")


@dataclass
class BenchSettings:
    models: list[str] = field(
        default_factory=lambda: ["moebius-0.2b", "pixelhacker", "sd15-inpaint"]
    )
    sizes: list[tuple[int, int]] = field(
        default_factory=lambda: [(256, 256), (512, 512), (768, 768), (1024, 1024), (768, 512)]
    )  # (width, height) in pixels
    batches: list[int] = field(default_factory=lambda: [1, 2])
    dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])
    modes: list[str] = field(default_factory=lambda: ["eager"])
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    steps: int = field(default_factory=lambda: InpaintSettings().steps)
    pipeline_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(512, 512)])
    plain: bool = True
    profile: bool = True
    accuracy: bool = True
    threads: int | None = None
    roofline_size: int = 2048
    keep_freed_memory: bool = False  # CPU: see moebius.allocator
    tune: bool = False  # time every engine again (moebius.nn.engines) instead of the cache
    vae: bool = True  # the VAE's own timings and errors, at the first pipeline size
    # torch, and the exported runtimes (onnxruntime, openvino) run on the first student
    backends: list[str] = field(default_factory=lambda: ["torch"])
    vae_config: str = str(SDXL_VAE_CONFIG)  # the VAE of the pipeline timings and exports


def _allow_recompiles() -> None:
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


class Benchmark:
    def __init__(self, settings: BenchSettings, log: Callable[[str], None] = print):
        self.settings = settings
        self.log = log
        self.device = torch.device(settings.device)
        self.timer = Timer(self.device)
        self.notes: list[str] = []
        self._compiled: dict[tuple, Callable] = {}
        self._vae_model = None
        self.edge_timings: list[dict] = []  # export, load and first-step seconds per variant
        self._workdir: Path | None = None  # exports of the edge subjects, for one run

    def _subjects(self) -> list[Subject]:
        subjects = []
        for name in self.settings.models:
            # the same random weights in every run, whatever drew random numbers before (the
            # engine tuner does on a machine's first run): accuracy rows depend on the weights
            torch.manual_seed(0)
            try:
                subjects += build_subjects(name, self.device, self.settings.plain)
            except Exception as exc:
                if name not in OPTIONAL_MODELS:
                    raise
                note = f"skipped {name}: {type(exc).__name__}: {exc}"
                self.notes.append(note)
                self.log(note)
        runtimes = [b for b in self.settings.backends if b != "torch"]
        students = [x for x in subjects if x.role == "student" and x.variant == "default"]
        if runtimes and students:
            from moebius.bench.edge import edge_subjects, edge_variants

            variants = edge_variants(runtimes, self.settings.dtypes)
            self.log(f"exporting {students[0].label} for {', '.join(v.label for v in variants)}")
            edges, self.edge_timings = edge_subjects(
                students[0], self._vae(), variants, self._workdir, self.settings.threads, self.log
            )
            subjects += edges
            self.notes.append(
                "exported runtimes: the student exported by moebius export (float32 graphs, "
                "8-bit schemes derived from them); each pipeline row is timed after a 1-step "
                "call, since OpenVINO compiles a graph for each new shape on first use"
            )
        if "torch" not in self.settings.backends:
            subjects = [x for x in subjects if x.role == "edge"]
        return subjects

    def _vae(self):
        """The pipeline timings' VAE (random weights: speed does not depend on them)."""
        if self._vae_model is None:
            from diffusers import AutoencoderKL

            config = json.loads(Path(self.settings.vae_config).read_text())
            self._vae_model = AutoencoderKL.from_config(config).eval().to(self.device)
        return self._vae_model

    def _runner(self, subject: Subject, x, t, dtype, mode) -> Callable[[], torch.Tensor]:
        step = subject.step(dtype)
        if mode == "compile":
            key = (subject.label, dtype)
            if key not in self._compiled:
                _allow_recompiles()
                self._compiled[key] = torch.compile(step)
            step = self._compiled[key]

        def run():
            with torch.inference_mode(), autocast(self.device, dtype):
                return step(x, t)

        return run

    def _flops(self, subject: Subject, x, t) -> dict:
        """FLOPs of this variant's forward (counted) and, for students, the closed form."""
        counted = measured_flops(subject.step(), x, t)
        out = {"flops": counted}
        if subject.student_config is not None:
            b, _, h, w = x.shape
            out["flops_closed_form_plain"] = student_flops(subject.student_config, h, w, b)
        return out

    def step_latency(self, subjects: list[Subject], roofline: dict) -> list[dict]:
        s = self.settings
        results = []
        flop_cache: dict = {}
        for width, height in s.sizes:
            for batch in s.batches:
                x = torch.randn(batch, 9, height // 8, width // 8, device=self.device)
                t = torch.full((batch,), TIMESTEP, device=self.device)
                for dtype_name in s.dtypes:
                    dtype = DTYPES[dtype_name]
                    for mode in s.modes:
                        results += self._group(
                            subjects,
                            x,
                            t,
                            (width, height),
                            dtype_name,
                            dtype,
                            mode,
                            roofline,
                            flop_cache,
                        )
        return results

    def _in_turns(self, runs: list[Callable], repeats: int | None = None) -> list[list[float]]:
        """``repeats`` (default: the settings') timings of each run, taken in turns (A B C A B C
        …) so that machine load hits all of them alike."""
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(repeats or self.settings.repeats):
            for run, runs_s in zip(runs, times, strict=True):
                runs_s.append(self.timer(run))
        return times

    def _group(self, subjects, x, t, size, dtype_name, dtype, mode, roofline, flop_cache):
        """One (size, batch, dtype, mode) cell: warm every subject, then time them in turns."""
        s = self.settings
        batch = x.shape[0]
        live, rows = [], []
        for subject in subjects:
            if subject.runtime is not None and (subject.precision != dtype_name or mode != "eager"):
                continue  # an exported runtime runs in its own precision, as it is
            row = {
                "model": subject.name,
                "variant": subject.variant,
                "label": subject.label,
                "role": subject.role,
                "size": list(size),
                "batch": batch,
                "dtype": dtype_name,
                "mode": mode,
                "params": subject.params,
            }
            rows.append(row)
            run = self._runner(subject, x, t, dtype, mode)
            try:
                for _ in range(s.warmup):
                    run()
                synchronize(self.device)
            except Exception as exc:  # e.g. out of memory, or compile unsupported
                row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                self.log(f"{subject.label} {size} b{batch} {dtype_name} {mode}: {row['status']}")
                continue
            row["status"] = "ok"
            live.append((subject, row, run))
        times = self._in_turns([run for _, _, run in live])
        for (subject, row, run), runs_s in zip(live, times, strict=True):
            row["latency"] = summarize(runs_s)
            counted = subject.exports or subject  # an export does the maths of its source
            key = (counted.label, size, x.shape[0])
            if key not in flop_cache:
                flop_cache[key] = self._flops(counted, x, t)
            row.update(flop_cache[key])
            achieved = row["flops"] / (row["latency"]["median_ms"] / 1000)
            row["achieved_flops_per_s"] = achieved
            # 8-bit products are bounded by the integer units, which the roofline does not time
            share = None if subject.integer_products else achieved / roofline[dtype_name]
            row["roofline_fraction"] = share
            row["peak_memory_bytes"] = peak_memory(run, self.device)
            self.log(
                f"{subject.label:28s} {size[0]}x{size[1]} b{batch} {dtype_name:8s} {mode:7s} "
                f"{row['latency']['median_ms']:10.1f} ms/step"
                + ("" if share is None else f"  ({100 * share:.0f}% of matmul roofline)")
            )
        return rows

    def pipeline(self, subjects: list[Subject]) -> list[dict]:
        """A whole inpainting through :class:`~moebius.pipeline.MoebiusInpaintPipeline`, the
        code users run: VAE encodes, N guided steps, decode and paste-back, with its own phase
        timings (a random VAE of the real SDXL config; speed does not depend on weights)."""
        vae = self._vae()
        rows = []
        for width, height in self.settings.pipeline_sizes:
            for dtype_name in self.settings.dtypes:
                for subject in subjects:
                    if subject.runtime is not None and subject.precision != dtype_name:
                        continue
                    try:
                        row = self._pipeline_once(subject, vae, (width, height), DTYPES[dtype_name])
                    except Exception as exc:  # recorded, the other rows still run
                        self.notes.append(f"pipeline {subject.label} {dtype_name}: {exc}")
                        continue
                    row.update(label=subject.label, size=[width, height], dtype=dtype_name)
                    rows.append(row)
                    self.log(
                        f"pipeline {subject.label:28s} {width}x{height} {dtype_name:8s} "
                        f"{row['total_s']:.2f} s ({row['steps']} steps)"
                    )
        return rows

    def _pipeline_once(self, subject: Subject, vae, size: tuple[int, int], dtype) -> dict:
        import numpy as np
        from PIL import Image

        from moebius.pipeline import MoebiusInpaintPipeline
        from moebius.settings import InpaintSettings, Strategy

        width, height = size
        generator = np.random.default_rng(0)
        image = Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : height // 2, width // 4 : width // 2] = 255
        settings = InpaintSettings(steps=self.settings.steps, strategy=Strategy.ORIGINAL)
        if subject.runtime is not None:
            pipe = subject.runtime
            # OpenVINO compiles a graph for each new shape on first use: not part of the time
            pipe(image, Image.fromarray(mask), settings=replace(settings, steps=1, strength=1.0))
        else:
            vae_copy = vae if dtype == torch.float32 else copy.deepcopy(vae).to(dtype)
            pipe = MoebiusInpaintPipeline(subject.model(dtype), vae_copy)
            pipe.set_progress_bar_config(disable=True)
            if self.settings.warmup:
                # Untimed, with two steps: first calls tune the shapes the engine cache lacks
                # (the VAE's) and pack weights, which a machine pays once, not on every
                # inpainting.
                pipe(image, Image.fromarray(mask), settings=replace(settings, steps=2))
        out = pipe(image, Image.fromarray(mask), settings=settings)
        if subject.runtime is not None:
            # Every variant's graphs compiled for the pipeline's shapes at once outgrew 24 GiB.
            pipe.engine.release()
        timings = out.timings
        return {
            "steps": settings.steps,
            "denoising_steps": settings.denoising_steps,
            "encode_s": timings["prepare"] + timings["encode"],
            "denoise_s": timings["denoise"],
            "decode_s": timings["decode"] + timings["paste"],
            "total_s": timings["total"],
            "vae_s": timings["encode"] + timings["decode"],
            "vae_share": (timings["encode"] + timings["decode"]) / timings["total"],
            "warmed_up": subject.runtime is not None or bool(self.settings.warmup),
        }

    def vae(self, size: tuple[int, int]) -> dict:
        """The VAE's fast-path choices timed against the alternatives (the pipeline timings'
        configuration, SDXL's by default) and its reduced-precision and tiling errors (the
        trained demo VAE on a photo)."""
        from diffusers import AutoencoderKL

        from moebius.bench import vae as vae_bench

        config = json.loads(Path(self.settings.vae_config).read_text())
        timed = adopt(AutoencoderKL.from_config(config).eval().to(self.device))
        repeats = min(self.settings.repeats, 3)  # seconds per call: fewer runs suffice
        rows = []
        for name in self.settings.dtypes:
            self.log(f"VAE {name} at {size[0]}x{size[1]}")
            rows += vae_bench.timings(
                timed, size, DTYPES[name], partial(self._in_turns, repeats=repeats), self.device
            )
        work = vae_bench.work(timed, size)
        for row in rows:
            row["gflop"] = work[row["run"]]
        low = [d for d in self.settings.dtypes if d != "float32"]
        errors = vae_bench.errors(size, DTYPES[low[0]], self.device) if low else None
        return {"timings": rows, "errors": errors}

    def profile(self, subject: Subject, size: tuple[int, int]) -> list[dict]:
        """Share of one batch-1 float32 forward spent in each kind of module."""
        width, height = size
        x = torch.randn(1, 9, height // 8, width // 8, device=self.device)
        t = torch.full((1,), TIMESTEP, device=self.device)
        spent: dict[str, float] = {}
        starts: dict[int, float] = {}
        handles = []

        def before(module, _):
            synchronize(self.device)
            starts[id(module)] = time.perf_counter()

        def after(module, _, __):
            synchronize(self.device)
            name = type(module).__name__
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - starts.pop(id(module))

        for module in subject.module.modules():
            if type(module).__name__ in PROFILED:
                handles += [
                    module.register_forward_pre_hook(before),
                    module.register_forward_hook(after),
                ]
        try:
            with torch.inference_mode():
                subject.step()(x, t)  # warm
                spent.clear()
                synchronize(self.device)
                start = time.perf_counter()
                subject.step()(x, t)
                synchronize(self.device)
                total = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
        inner = {"Downsample", "Upsample"}  # not nested in the others
        rows = [{"module": k, "ms": 1000 * v, "share": v / total} for k, v in spent.items()]
        nested = sum(v for k, v in spent.items() if k not in inner and k != "DWResBlock")
        rows.sort(key=lambda r: -r["ms"])
        rest = total - sum(spent.get(k, 0.0) for k in ("DWResBlock", *inner)) - nested
        rows.append(
            {
                "module": "other (norms, 1×1 projections, glue)",
                "ms": 1000 * rest,
                "share": rest / total,
            }
        )
        rows.append({"module": "total", "ms": 1000 * total, "share": 1.0})
        return rows

    def op_profile(self, subject: Subject, size: tuple[int, int], top: int = 12) -> list[dict]:
        """Share of one batch-1 float32 forward per operator (the fast path has no per-layer
        module calls to hook): torch.profiler self time, largest first."""
        from torch.profiler import ProfilerActivity, profile

        width, height = size
        x = torch.randn(1, 9, height // 8, width // 8, device=self.device)
        t = torch.full((1,), TIMESTEP, device=self.device)
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with torch.inference_mode():
            subject.step()(x, t)
            with profile(activities=activities) as prof:
                subject.step()(x, t)
                synchronize(self.device)
        attr = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
        total = sum(getattr(e, attr) for e in events)
        events.sort(key=lambda e: -getattr(e, attr))
        rows = [
            {
                "module": f"op {e.key} (×{e.count})",
                "ms": getattr(e, attr) / 1000,
                "share": getattr(e, attr) / total,
            }
            for e in events[:top]
        ]
        rest = total - sum(getattr(e, attr) for e in events[:top])
        rows.append({"module": "other ops", "ms": rest / 1000, "share": rest / total})
        rows.append({"module": "total", "ms": total / 1000, "share": 1.0})
        return rows

    def local_lambda(self, config, size: tuple[int, int], batch: int = 2) -> list[dict]:
        """The two exact ways to compute Local-λ, per UNet level, in one interleaved run: the
        plain path convolves every value channel with the r×r kernel bank, (E_i ∗ V_j), then
        applies the queries; the default path contracts the queries with the kernel bank
        first, Σ_Δ (Σ_i Q_i E_i(Δ)) V(n + Δ) (float32, random weights)."""
        from moebius.nn.lambda_layers import LocalLambda

        width, height = size
        rows = []
        for level, channels in enumerate(config.block_out_channels):
            h, w = height // 8 // 2**level, width // 8 // 2**level
            plain = LocalLambda(channels, config.heads, config.local_receptive_field).eval()
            plain.plain = True
            fast = copy.deepcopy(plain)
            fast.plain = False
            fast.fuse_batchnorm()
            plain.to(self.device)
            fast.to(self.device)
            x = torch.randn(batch, channels, h, w, device=self.device)
            tokens = x.flatten(2).transpose(1, 2).contiguous()
            runs = {
                "plain": partial(plain, x),
                "default": partial(fast.forward_tokens, tokens, (h, w)),
            }
            with torch.inference_mode():
                for run in runs.values():
                    run()
                times = self._in_turns(list(runs.values()))
            row = {"level": level, "channels": channels, "size": [w, h], "batch": batch}
            for (name, run), runs_s in zip(runs.items(), times, strict=True):
                row[f"{name}_ms"] = summarize(runs_s)["median_ms"]
                row[f"{name}_flops"] = measured_flops(run)
            row["ratio"] = row["default_ms"] / row["plain_ms"]
            rows.append(row)
        return rows

    def accuracy(self, subject: Subject, size: tuple[int, int], low: str) -> dict:
        """Reduced-precision error against float32: one noise prediction and an N-step latent
        trajectory of the shared sampler."""
        from moebius.sampling import DDIMSampler, NoiseSchedule, denoise, guided
        from moebius.settings import InpaintSettings

        width, height = size
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 9, height // 8, width // 8, generator=gen).to(self.device)
        t = torch.full((2,), TIMESTEP, device=self.device)

        def predict(latent_input, timesteps, dtype):
            with torch.inference_mode(), autocast(self.device, dtype):
                return subject.step(dtype)(latent_input, timesteps).float()

        ref, got = predict(x, t, torch.float32), predict(x, t, DTYPES[low])
        out = {
            "dtype": low,
            "size": list(size),
            "eps_max_abs": (got - ref).abs().max().item(),
            "eps_mean_abs": (got - ref).abs().mean().item(),
            "eps_ref_mean_abs": ref.abs().mean().item(),
        }
        guidance = InpaintSettings().guidance
        finals = []
        for dtype in (torch.float32, DTYPES[low]):

            def guided_noise(latent, step_t, dtype=dtype):
                inp = torch.cat([latent, x[:1, 4:]], dim=1).repeat(2, 1, 1, 1)
                timesteps = torch.full((2,), step_t, device=self.device)
                return guided(predict(inp, timesteps, dtype), guidance)

            sampler = DDIMSampler(NoiseSchedule(), self.settings.steps)
            finals.append(denoise(guided_noise, sampler, x[:1, :4].clone()))
        out["trajectory_steps"] = self.settings.steps
        out["latent_max_abs"] = (finals[1] - finals[0]).abs().max().item()
        out["latent_mean_abs"] = (finals[1] - finals[0]).abs().mean().item()
        out["latent_ref_mean_abs"] = finals[0].abs().mean().item()
        # The images the two final latents decode to, each VAE in its trajectory's dtype.
        out["decoded"] = decoded_difference(finals[0], finals[1], DTYPES[low], self.device)
        return out

    def run(self) -> dict:
        threads = torch.get_num_threads()
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        try:
            with tempfile.TemporaryDirectory(prefix="moebius-bench-") as workdir:
                self._workdir = Path(workdir)
                return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict:
        s = self.settings
        torch.manual_seed(0)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are fixed within a cell
        if s.keep_freed_memory and not keep_freed_memory():
            self.notes.append("could not tune the allocator (not glibc); system default used")
        if s.tune:
            engines.retune()
        subjects = self._subjects()
        if not subjects:
            from moebius.errors import InputError

            raise InputError("no model could be built: " + "; ".join(self.notes))
        by_engine = {d: matmul_rooflines(self.device, DTYPES[d], s.roofline_size) for d in s.dtypes}
        roofline = {d: max(rates.values()) for d, rates in by_engine.items()}
        for d, rates in by_engine.items():
            each = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in rates.items())
            self.log(f"matmul roofline {d}: {roofline[d] / 1e9:.1f} GFLOP/s ({each})")
        conversion = bfloat16_conversion_note(self.device, torch.bfloat16)
        if "bfloat16" in s.dtypes and conversion:
            note = f"{conversion}; the bfloat16 times and roofline shares measure that conversion"
            self.notes.append(note)
            self.log(note)
        report = {
            "schema": SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(self.device),
            "settings": asdict(s),
            "flop_convention": "torch.utils.flop_counter: 2 FLOPs per multiply-add; "
            "matrix products and convolutions only",
            "roofline_flops_per_s": roofline,
            "roofline_by_engine_flops_per_s": by_engine,
            "results": self.step_latency(subjects, roofline),
        }
        report["pipeline"] = (
            self.pipeline([x for x in subjects if x.variant == "default" or x.role == "edge"])
            if s.pipeline_sizes
            else []
        )
        profile_size = min(s.sizes, key=lambda wh: abs(wh[0] * wh[1] - 512 * 512))
        report["profile"] = {}
        if s.profile:
            for subject in subjects:
                if subject.student_config is None:
                    continue
                self.log(f"profiling {subject.label} at {profile_size}")
                rows = (
                    self.profile(subject, profile_size)
                    if subject.variant == "plain"
                    else self.op_profile(subject, profile_size)
                )
                report["profile"][subject.label] = {"size": list(profile_size), "rows": rows}
        report["local_lambda"] = {}
        if s.profile:
            students = {x.name: x.student_config for x in subjects if x.student_config}
            for name, config in students.items():
                self.log(f"Local-λ variants of {name} at {profile_size}")
                report["local_lambda"][name] = {
                    "size": list(profile_size),
                    "rows": self.local_lambda(config, profile_size),
                }
        report["accuracy"] = []
        low = [d for d in s.dtypes if d != "float32"]
        if s.accuracy and low:
            for subject in subjects:
                if subject.student_config is not None and subject.variant == "default":
                    size = min(s.sizes, key=lambda wh: wh[0] * wh[1])
                    self.log(f"{low[0]} error of {subject.label} at {size}")
                    report["accuracy"].append(self.accuracy(subject, size, low[0]))
        report["vae"] = self.vae(s.pipeline_sizes[0]) if s.vae and s.pipeline_sizes else None
        report["engines"] = engines.report()
        report["edge_quality"] = self.edge_quality(subjects) if s.pipeline_sizes else None
        report["edge_timings"] = self.edge_timings
        report["notes"] = self.notes
        return report

    def edge_quality(self, subjects: list[Subject]) -> dict | None:
        """The exported runtimes' (and PyTorch bfloat16's) drift from float32 PyTorch over a
        whole inpainting at the first pipeline size (:mod:`moebius.export.quality`)."""
        from moebius.export.quality import trajectory_quality
        from moebius.pipeline import MoebiusInpaintPipeline

        edges = [x for x in subjects if x.role == "edge"]
        if not edges:
            return None
        student, vae = edges[0].exports, self._vae()
        reference = MoebiusInpaintPipeline(student.model(), vae)
        candidates = {}
        for dtype_name in self.settings.dtypes:
            if dtype_name != "float32" and "torch" in self.settings.backends:
                low = copy.deepcopy(vae).to(DTYPES[dtype_name])
                pipe = MoebiusInpaintPipeline(student.model(DTYPES[dtype_name]), low)
                candidates[f"torch {dtype_name}"] = pipe
        candidates.update({x.variant: x.runtime for x in edges})
        size = self.settings.pipeline_sizes[0]
        self.log(f"quality of {', '.join(candidates)} against float32 PyTorch at {size}")
        return trajectory_quality(reference, candidates, size, self.settings.steps)


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        **cpu_facts(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
