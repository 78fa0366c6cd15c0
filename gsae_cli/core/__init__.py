"""Shared beneath every stage: artifacts and their atomic writes, locks and status, progress
output, paths, CPU shares, local and S3 storage, torchrun ranks.
"""
