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
