"""Evaluation against an eval split: what ``experiments/evaluate.py`` runs.

``evaluate`` (sampling and scoring objects), ``metrics`` (PSNR, SSIM, LPIPS, FID, Chamfer
distance, F-score), ``perceptual`` (LPIPS with real weights or "unavailable"), ``stats`` (the
project's one confidence interval).
"""
