"""Data sets: specs and adapters, patient-level splits, fingerprints, downloads."""
