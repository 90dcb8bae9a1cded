"""isimjax: the Iterative Self-Improved Model (ISIM) for weakly supervised segmentation."""
