"""The names of everything `finetune` writes in a run folder (one place for all of them)."""

PHASES = ("head", "finetune")

STATE_FILE = "state.json"          # settings, data fingerprint, attempts, phase progress
DATA_FILES = "data_files.json"     # the data folder's file list, to say what changed
LOCK_FILE = ".lock"                # one process at a time
RUN_FILE = "run.json"              # class names + weights record: what load_run reads
MODEL_FILE = "model.keras"         # the exported model (class names inside)
SAVED_MODEL = "saved_model"
BEST_MODEL = "best.keras"          # best epoch so far, with optimizer state
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "curves.png"
HYGIENE_JSON, HYGIENE_TXT = "hygiene.json", "hygiene.txt"
BACKUP_DIR = "backup"              # backup/<phase>: crash-consistent epoch backups
EMBEDDINGS_DIR = "embeddings"      # the head phase's cached embeddings
CACHE_DIR = "cache"                # decoded images with cache="disk"
WORKERS_DIR = "workers"            # other workers' own run folders (multi-worker)


def phase_weights(phase):
    """The weights a finished phase leaves for a resume."""
    return f"{phase}.weights.h5"


# What `restart=True` removes: everything above but the lock and other workers' folders (each
# worker clears its own).
RUN_ENTRIES = (STATE_FILE, DATA_FILES, RUN_FILE, MODEL_FILE, SAVED_MODEL, BEST_MODEL, METRICS,
               SUMMARY, CONFUSION_PNG, CURVES_PNG, HYGIENE_JSON, HYGIENE_TXT, BACKUP_DIR,
               EMBEDDINGS_DIR, CACHE_DIR) + tuple(phase_weights(p) for p in PHASES)
