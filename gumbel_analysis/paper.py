"""Numbers from the paper and its reference code, in one place (no heavy imports: the command
line reads its defaults from here)."""

#: The reference code's logit clip range (Sec. 1.3) and the clamp of its reduced loss.
PAPER_CLIP = (-4.0, 10.0)
PAPER_LOSS_CLAMP = (0.0, 20.0)
#: The temperatures of Sec. 1.2 / Fig. 1.
PAPER_SIGMAS = (0.8, 0.9, 1.0, 1.1, 1.2)
#: Training images of LVIS v1.
LVIS_V1_TRAIN_IMAGES = 100_170
#: Lambda that splits LVIS v1 at the common/frequent border: rare (<= 10 images) and common
#: (11-100 images) have f_c <= 100 / 100170 < lambda, frequent (> 100 images) f_c >= 101 / 100170.
#: The reference configuration uses 0.0011, which also drops frequent classes with 101-110 images.
LVIS_V1_LAMBDA = 100.5 / LVIS_V1_TRAIN_IMAGES

#: The supplementary material's result rows (mask AP, AP^r, AP^c, AP^f and box AP^b on LVIS v1
#: val, Mask R-CNN ResNet-50-FPN), keyed by the configuration names of
#: ``gumbel_analysis.experiments.material``.
PAPER_METRICS = ("AP", "APr", "APc", "APf", "APb")
#: Table 1 (ablation, schedule 2x). Its rows without Gumbel are Softmax Mask R-CNN: its first
#: row is Table 4's "Softmax, random" (18.7 / 1.1 / 16.2 / 29.2 / 19.5).
PAPER_TABLE1 = {
    "softmax": (18.7, 1.1, 16.2, 29.2, 19.5),
    "gumbel": (22.0, 8.9, 20.3, 29.6, 22.4),
    "softmax-enh": (21.6, 3.8, 21.7, 29.2, 22.5),
    "gumbel-enh": (23.9, 11.4, 23.4, 29.9, 24.2),
    "softmax-rfs": (23.7, 13.3, 23.0, 29.0, 24.7),
    "gumbel-rfs": (23.5, 13.8, 22.2, 29.2, 24.3),
    "softmax-rfs-enh": (25.3, 17.4, 24.9, 29.2, 26.0),
    "gumbel-rfs-enh": (26.1, 18.4, 25.9, 29.8, 26.8),
    "gol-star-rfs-enh": (26.9, 18.1, 26.5, 31.3, 26.8),
    "gol": (25.6, 14.5, 26.1, 29.9, 25.1),
    "gol-rfs-enh": (27.7, 21.4, 27.7, 30.4, 27.5),
}
#: Table 2 (long-tail losses with either activation, schedule 1x).
PAPER_TABLE2 = {
    "eql-sigmoid": (18.6, 2.1, 17.4, 27.2, 19.3),
    "eql-gumbel": (21.7, 9.6, 20.6, 28.2, 21.8),
    "droploss-sigmoid": (19.8, 3.5, 20.0, 26.7, 20.4),
    "droploss-gumbel": (22.0, 10.0, 22.1, 27.1, 21.9),
    "acsl-sigmoid": (20.7, 9.6, 19.7, 26.6, 21.2),
    "acsl-gumbel": (21.0, 10.9, 19.8, 26.7, 21.1),
    "federated-sigmoid": (17.6, 1.8, 14.9, 27.5, 18.2),
    "federated-gumbel": (20.1, 6.0, 18.5, 28.0, 20.5),
}
#: Table 3 (activations, schedule 1x; the Mask R-CNN ResNet-50 rows).
PAPER_TABLE3 = {
    "sigmoid": (16.4, 0.8, 12.7, 27.3, 17.2),
    "softmax": (15.2, 0.0, 10.6, 26.9, 16.1),
    "gumbel": (19.0, 4.9, 16.8, 27.6, 19.1),
}
#: Table 3's other frameworks (ResNet-101): Cascade Mask R-CNN and Hybrid Task Cascade.
PAPER_TABLE3_FRAMEWORKS = {
    "cascade-softmax": (18.8, 0.6, 15.7, 30.3, 21.3),
    "cascade-gumbel": (22.9, 6.6, 22.4, 30.7, 25.8),
    "htc-softmax": (19.1, 0.6, 15.8, 31.0, 21.1),
    "htc-gumbel": (23.3, 6.1, 22.7, 31.4, 25.6),
}
#: Table 4 (against the state of the art, schedule 2x; the ResNet-50 rows of methods this
#: toolkit implements).
PAPER_TABLE4 = {
    "softmax": (18.7, 1.1, 16.2, 29.2, 19.5),
    "loce": (23.8, 8.3, 23.7, 30.7, 24.0),  # the random-sampler block's LOCE row
    "eqlv2": (25.5, 17.7, 24.3, 30.2, 26.1),
    "seesaw": (25.0, 16.1, 24.2, 29.7, 25.6),
    "disalign": (24.2, 13.2, 23.8, 29.3, 24.7),
    "gol": (25.6, 14.5, 26.1, 29.9, 25.1),
    "eqlv2-rfs": (25.8, 17.3, 25.4, 30.0, 26.2),
    "seesaw-rfs": (26.4, 19.5, 26.1, 29.7, 27.6),
    "loce-mfs": (26.6, 18.5, 26.2, 30.7, 27.4),  # LOCE with its MFS sampler
    "norcal": (25.2, 19.3, 24.2, 28.6, float("nan")),  # the RFS block's; no box AP reported
    "gol-star-rfs-enh": (26.9, 18.1, 26.5, 31.3, 26.8),
    "gol-rfs-enh": (27.7, 21.4, 27.7, 30.4, 27.5),
}
#: Fig. 2: Gumbel's mean positive gradient over Sigmoid's, in dB (overall and rare).
PAPER_GRADIENT_GAIN_DB = {"all": 7.0, "r": 10.0}
