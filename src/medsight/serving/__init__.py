"""Result objects for hospital systems (DICOM SEG, SR, Secondary Capture) and serving."""
