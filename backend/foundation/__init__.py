"""Pretrained vision-language checkpoints: what each published one is (presets), reading and recognising files
(checkpoint), the image/text towers (model), band selection and scaling (bands), zero-shot maps (zeroshot),
tile retrieval (retrieval) and few-shot adaptation (fewshot)."""
