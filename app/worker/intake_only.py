"""StreamRec's intake alone, for `streamrec bench pipeline` (see app.worker.ceiling).

    python -m app.worker.intake_only     # reads the same STREAMREC_* settings as a worker
"""

from __future__ import annotations

from app.worker.ceiling import main

if __name__ == "__main__":
    main(intake=True)
