"""DICOM de-identification: the PS3.15 profile as data, the engine that applies it, pseudonyms, audit."""
