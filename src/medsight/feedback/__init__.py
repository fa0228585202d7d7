"""The loop back to training (issue 12 §4): reviewed cases exported as a data set with a frozen validation split
(``export``), a new bundle compared with the old on the same cases with paired tests (``compare``), and the
service's record of which bundle each route uses, with promotion and rollback (``promotion``)."""
