"""A small Flask app for Stratus's python builder.

The builder installs requirements.txt and, since it lists gunicorn and this module defines
`app`, starts `gunicorn --bind 0.0.0.0:$PORT app:app`. At import the app creates its
instance folder (beside this file) and a SQLite database in it that counts visits: the
app's own files are writable, as a real app's uploads or caches need.
"""

import os
import sqlite3
from contextlib import closing

from flask import Flask

app = Flask(__name__)

os.makedirs(app.instance_path, exist_ok=True)
DATABASE = os.path.join(app.instance_path, "visits.sqlite3")


def connect():
    # Gunicorn's workers share the file: wait for a lock rather than fail.
    return sqlite3.connect(DATABASE, timeout=5)


with closing(connect()) as db, db:
    db.execute("CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY, at TEXT NOT NULL)")


@app.get("/")
def index():
    with closing(connect()) as db, db:
        db.execute("INSERT INTO visits (at) VALUES (datetime('now'))")
        (visits,) = db.execute("SELECT COUNT(*) FROM visits").fetchone()
    release = os.environ.get("STRATUS_RELEASE")
    greeting = f"hello from flask, release {release}" if release else "hello from flask"
    replica = os.environ.get("STRATUS_REPLICA", "?")
    return f"{greeting} (replica {replica}, visit {visits} to this replica)\n", {
        "Content-Type": "text/plain; charset=utf-8"
    }


@app.get("/healthz")
def healthz():
    return "ok\n", {"Content-Type": "text/plain; charset=utf-8"}


if __name__ == "__main__":
    # For trying it without gunicorn: python3 app.py
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))
