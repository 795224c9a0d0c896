"""Experiment 020: the class-prior (logit) adjustment on the EnMAP scene, measured post hoc.

For each split (random, 8-px checkerboard) and seed (0, 1, 2): train the default model on 10 %
of the labels (as bench/accuracy.py --only enmap does), get every pixel's cosine similarity to
each class prompt from api.query, and score argmax(scale * similarity + tau * log(class share
in training)) on the test pixels for several tau. Prints OA / AA per tau, mean of the seeds.

    .venv/bin/python docs/experiments/020-prior-adjustment.py [../shared/data/enmap-potsdam]
"""

import sys
import tempfile

import numpy as np
import rasterio

from rsvl.backend import api
from rsvl.backend.io.labels import split_label_raster
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.models.modelfile import load_model

TAUS = (0.0, 0.25, 0.5, 1.0)


def main(folder: str) -> None:
    scene, labels = f"{folder}/enmap_l2a_2022-07-24_west.tif", f"{folder}/landcover_l3_west.tif"
    layers = [LayerSpec(scene, "hsi")]
    tmp = tempfile.mkdtemp()
    scores = {}
    for kind in ("random", "checkerboard"):
        for seed in (0, 1, 2):
            train, test, model = f"{tmp}/train.tif", f"{tmp}/test.tif", f"{tmp}/model.safetensors"
            split_label_raster(labels, 0.1, seed, train, test, mode=kind, block_size=8)
            result = api.train(layers, train, model, seed=seed, device="cpu", class_names=f"{folder}/CLASSES.txt")
            names, codes = [c.name for c in result.classes], [c.code for c in result.classes]
            api.query(model, layers, names, output_similarity=f"{tmp}/sim.tif", device="cpu")
            scale = float(load_model(model)[0].scale().detach())
            with rasterio.open(f"{tmp}/sim.tif") as ds:
                sim = ds.read()
            with rasterio.open(train) as ds:
                train_codes = ds.read(1)
            with rasterio.open(test) as ds:
                test_codes = ds.read(1)
            prior = np.array([(train_codes == c).sum() for c in codes], float)
            prior /= prior.sum()
            tested = test_codes > 0
            truth = np.searchsorted(codes, test_codes[tested])
            for tau in TAUS:
                pred = (scale * sim[:, tested] + tau * np.log(prior)[:, None]).argmax(0)
                oa = float((pred == truth).mean())
                aa = float(np.mean([(pred[truth == k] == k).mean() for k in range(len(codes)) if (truth == k).any()]))
                scores.setdefault((kind, tau), []).append((oa, aa))
    for (kind, tau), values in scores.items():
        oa, aa = np.mean(values, axis=0)
        print(f"{kind:12s} tau={tau:<5} OA {oa:.3f} AA {aa:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/enmap-potsdam")
