"""The radiologist's review: verdicts on the AI's findings, the worklist, the reader's DICOM objects and agreement.

``verdicts`` is the data (a table in the service database that ``medsight feedback export`` reads back);
``worklist`` reads the service's results, ``reader_objects`` writes the reader's SR and SEG, ``agreement`` scores
the models against the readers, ``passwords`` hashes log-in passwords and ``api`` holds the HTTP routes.
"""
