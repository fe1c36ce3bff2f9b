"""Saliency masks without labels (the ``saliency`` job): classical cues, their scores."""
