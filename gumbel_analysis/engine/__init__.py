"""Training, inference and evaluation of Mask R-CNN with a chosen classification loss."""
