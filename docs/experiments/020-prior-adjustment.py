import numpy as np, rasterio, json, sys, os, tempfile
from rsvl.backend import api
from rsvl.backend.io.labels import split_label_raster
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.models.modelfile import load_model
D = "/work/shared/data/enmap-potsdam/"
layers = [LayerSpec(D + "enmap_l2a_2022-07-24_west.tif", "hsi")]
tmp = tempfile.mkdtemp()
out = {}
for kind in ("random", "checkerboard"):
    for seed in (0, 1, 2):
        tr, te = f"{tmp}/tr.tif", f"{tmp}/te.tif"
        split_label_raster(D + "landcover_l3_west.tif", 0.1, seed, tr, te, mode=kind, block_size=8)
        m = f"{tmp}/m.safetensors"
        res = api.train(layers, tr, m, seed=seed, device="cpu", class_names=D + "CLASSES.txt")
        names = [c.name for c in res.classes]
        api.query(m, layers, names, output_similarity=f"{tmp}/s.tif", device="cpu")
        model, header = load_model(m)
        scale = float(model.scale())
        with rasterio.open(f"{tmp}/s.tif") as ds: sim = ds.read()
        with rasterio.open(tr) as ds: trc = ds.read(1)
        with rasterio.open(te) as ds: tec = ds.read(1)
        codes = [c.code for c in res.classes]
        prior = np.array([(trc == c).sum() for c in codes], float); prior /= prior.sum()
        ok = tec > 0
        truth = np.searchsorted(codes, tec[ok])
        for tau in (0.0, 0.25, 0.5, 1.0):
            logit = scale * sim[:, ok] + tau * np.log(prior)[:, None]
            pred = logit.argmax(0)
            oa = (pred == truth).mean()
            aa = np.mean([(pred[truth == k] == k).mean() for k in range(len(codes)) if (truth == k).any()])
            out.setdefault(f"{kind} tau={tau}", []).append((oa, aa))
        print(kind, seed, scale, {k: v[-1] for k, v in out.items() if k.startswith(kind)}, flush=True)
for k, v in out.items():
    v = np.array(v); print(k, "OA %.3f AA %.3f" % tuple(v.mean(0)))
