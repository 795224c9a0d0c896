"""Spectral distillation (SATtxt's recipe, issue 11 item 4): a frozen multispectral
teacher and an RGB (or any fewer-band) student trained to give the teacher's embeddings,
so imagery with fewer bands at classification time gets spectrally informed embeddings in
the teacher's text-aligned space.

- Teacher: an rsvl model (MMLGNet) on its own layers (e.g. 13-band Sentinel-2 + DEM),
  computed with the exact dense engine.
- Student: an MMLGNet on the student layers (e.g. the RGB bands, with or without the
  DEM), same embedding size and patch size; its class embeddings are the teacher's, so
  it classifies and answers text queries in the teacher's space.
- Data: no labels are needed. ``samples`` valid pixels are drawn at random over the
  scene (seeded); the student learns ``1 - cos(student(x_rgb), teacher(x_ms))`` with
  Adam, 10 % of the pixels held out, the weights of the best held-out cosine kept.
- Both layer sets must lie on one grid (the teacher's reference grid).

The student is written as an ordinary rsvl model file (method ``mmlgnet-distilled``):
rsvl:classify and rsvl:query use it like any other, served by the dense engine.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io.labels import ClassInfo

log = logging.getLogger("rsvl")


@dataclass
class DistillResult:
    model_path: str
    classes: List[ClassInfo]
    n_samples: int
    cosine_before: float  # held-out mean cosine of student and teacher embeddings, untrained student
    cosine_after: float  # the same for the kept weights
    epochs_run: int
    best_epoch: int
    seconds: float
    history: List[dict] = field(default_factory=list)


def _teacher_samples(teacher, header, t_stack, s_stack, s_stats, n: int, seed: int, device, job):
    """Teacher embeddings (N, D) and student patches ({modality: (N, b, P, P)}) at N
    random valid pixels (valid in both stacks)."""
    from ..data.samples import patches_at, read_window_normalised
    from ..io.windows import tile_windows
    from ..models.dense import DenseEmbedder

    halo_t = header.config.patch_size // 2
    windows = list(tile_windows(t_stack.width, t_stack.height, 128))
    total = t_stack.width * t_stack.height
    rate = min(1.0, n / max(total, 1) * 1.3)  # oversample: nodata pixels are dropped
    rng = np.random.default_rng(seed)
    engine = DenseEmbedder(teacher, device)
    emb, patches = [], {m: [] for m in s_stack.modalities}
    for i, w in enumerate(windows):
        job.step(i / len(windows), "teacher embeddings")
        pick = rng.random((int(w.height), int(w.width))) < rate
        if not pick.any():
            continue
        t_norm, t_ok = read_window_normalised(t_stack, w, halo_t, header.stats)
        s_norm, s_ok = read_window_normalised(s_stack, w, halo_t, s_stats)
        rows, cols = np.nonzero(pick & t_ok & s_ok)
        if rows.size == 0:
            continue
        with torch.no_grad():
            e = engine.embed({m: torch.from_numpy(a)[None] for m, a in t_norm.items()})[0]  # (D, h, w)
        emb.append(e[:, torch.from_numpy(rows), torch.from_numpy(cols)].t().cpu())
        for m, a in patches_at(s_norm, rows, cols, 2 * halo_t + 1).items():
            patches[m].append(a)
    if not emb:
        raise InputError("no pixel is valid in both the teacher's and the student's layers")
    emb = torch.cat(emb)
    keep = rng.permutation(emb.shape[0])[:n]
    return emb[keep].numpy(), {m: np.concatenate(v)[keep] for m, v in patches.items()}


def distill(
    teacher_model: str, teacher_layers, student_layers, output_model: str, *, samples: int = 20000,
    epochs: int = 30, batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0, device: str = "auto",
    progress=None, is_cancelled=None,
) -> DistillResult:
    """Train a student with fewer bands to reproduce a teacher's embeddings (see the
    module docstring) and save it as an rsvl model."""
    from ..io.atomic import check_extension, check_outputs
    from ..io.raster import RasterStack, as_layers
    from ..io.selection import fit_bands
    from ..models.mmlgnet import MMLGNet, ModelConfig
    from ..models.modelfile import ModelHeader, load_model, save_model
    from ..runtime.device import resolve_device
    from ..runtime.jobs import Job

    if samples < 10:
        raise InputError(f"SAMPLES must be at least 10 pixels (got {samples})")
    for name, value in (("EPOCHS", epochs), ("BATCH_SIZE", batch_size)):
        if value < 1:
            raise InputError(f"{name} must be at least 1 (got {value})")
    check_extension("OUTPUT_MODEL", output_model, "model")
    check_outputs([("OUTPUT_MODEL", output_model, 0)])
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    dev = resolve_device(device)
    teacher, header = load_model(teacher_model, dev)
    if header.members > 1:
        raise InputError(f"TEACHER {os.path.basename(teacher_model)!r} is an ensemble of {header.members} models "
                         "(MEMBERS): the student learns one embedding space; give a teacher trained with MEMBERS 1")
    with RasterStack(as_layers(teacher_layers)) as t_stack:
        header.check_stack(t_stack)
        with RasterStack(as_layers(student_layers)) as s_stack:
            diffs = t_stack.grid.differences(s_stack.grid)
            if diffs:
                raise InputError("the student's layers must lie on the teacher's grid: " + "; ".join(diffs))
            s_stats, s_selection = fit_bands(s_stack, job=job.span(0.0, 0.05))
            band_names = s_stack.band_names()
            band_counts = s_stack.band_counts()
            target, patches = _teacher_samples(teacher, header, t_stack, s_stack, s_stats, samples, seed, dev,
                                               job.span(0.05, 0.3))
    torch.manual_seed(seed)
    config = ModelConfig(bands=band_counts, embed_dim=header.config.embed_dim, patch_size=header.config.patch_size)
    student = MMLGNet(config, n_classes=len(header.classes)).to(dev)
    student.class_embeddings.copy_(teacher.class_embeddings)
    with torch.no_grad():
        student.logit_scale.copy_(teacher.logit_scale)
    n = target.shape[0]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(1, n // 10)
    val, train = order[:n_val], order[n_val:]
    x = {m: torch.from_numpy(p) for m, p in patches.items()}
    t = torch.from_numpy(target)

    def held_out_cosine() -> float:
        student.eval()
        with torch.no_grad():
            out = []
            for s in range(0, val.size, 1024):
                b = torch.from_numpy(val[s:s + 1024])
                z = student.embed({m: v[b].to(dev) for m, v in x.items()})
                out.append((z * t[b].to(dev)).sum(1).cpu())
        return float(torch.cat(out).mean())

    before = best = held_out_cosine()
    best_state, best_epoch, history = copy.deepcopy(student.state_dict()), 0, [{"epoch": 0, "val_cosine": before}]
    optimiser = torch.optim.Adam([p for n_, p in student.named_parameters() if n_ != "logit_scale"], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    job_train = job.span(0.3, 0.97)
    for epoch in range(1, epochs + 1):
        student.train()
        perm = torch.from_numpy(train)[torch.randperm(train.size, generator=generator)]
        total = 0.0
        for bi, s in enumerate(range(0, perm.numel(), batch_size)):
            job_train.step((epoch - 1 + bi * batch_size / max(perm.numel(), 1)) / epochs, f"epoch {epoch}/{epochs}")
            b = perm[s:s + batch_size]
            if b.numel() < 2:
                continue
            z = student.embed({m: v[b].to(dev) for m, v in x.items()})
            loss = (1 - F.cosine_similarity(z, t[b].to(dev), dim=1)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * b.numel()
        cos = held_out_cosine()
        history.append({"epoch": epoch, "train_loss": total / max(train.size, 1), "val_cosine": cos})
        if cos > best:
            best, best_state, best_epoch = cos, copy.deepcopy(student.state_dict()), epoch
    student.load_state_dict(best_state)
    student.eval()
    out_header = ModelHeader(
        config=config, band_names=band_names, stats=s_stats, classes=header.classes,
        prompt_template=header.prompt_template, text_encoder=header.text_encoder, method="mmlgnet-distilled",
        training={"distilled_from": os.path.abspath(teacher_model), "teacher_modalities": header.config.bands,
                  "samples": int(n), "epochs": epochs, "best_epoch": best_epoch, "seed": seed,
                  "val_cosine_before": before, "val_cosine_after": best, "history": history},
        bands=s_selection,
    )
    job.check()
    save_model(output_model, student.cpu(), out_header)
    job.report(1.0, f"student saved to {output_model}")
    log.info("distilled %s into %s: held-out cosine to the teacher %.3f -> %.3f (epoch %d)",
             os.path.basename(teacher_model), "+".join(f"{m}:{b}" for m, b in band_counts.items()), before, best,
             best_epoch)
    return DistillResult(output_model, header.classes, int(n), before, best, epochs, best_epoch,
                         time.perf_counter() - start, history)


def rgb_layers(path: str, bands: Sequence[int], out: str) -> str:
    """A VRT of ``bands`` (1-based) of ``path``: e.g. Sentinel-2 B04, B03, B02 (4, 3, 2)
    as the RGB imagery a student is distilled for. Band descriptions are kept."""
    from osgeo import gdal

    from ..io.gdal_exceptions import gdal_exceptions

    with gdal_exceptions():
        ds = gdal.BuildVRT(out, [path], bandList=list(bands))
        src = gdal.Open(path)
        for i, b in enumerate(bands, start=1):
            desc = src.GetRasterBand(b).GetDescription()
            if desc:
                ds.GetRasterBand(i).SetDescription(desc)
        ds = None
    return out


def student_vs_rgb_alone(distilled: Dict[str, float], alone: Dict[str, float]) -> str:
    """One line comparing the distilled student with an RGB model trained on labels alone."""
    return (f"student OA {distilled['oa']:.3f} AA {distilled['aa']:.3f} vs RGB trained alone OA {alone['oa']:.3f} "
            f"AA {alone['aa']:.3f}")
