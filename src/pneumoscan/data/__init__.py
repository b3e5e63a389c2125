"""Data: finding images (folder layout or synthetic), patient-grouped splits, decoding, augmentation."""
