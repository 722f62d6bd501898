"""The thread pool shared by the blocking auth backends (PAM conversations,
getpwnam): started on first use, stopped at reactor shutdown.  A leaf
module (pam and passwd both use it, neither imports the other for it)."""

from __future__ import annotations

from typing import Any

from twisted.python.threadpool import ThreadPool

#: Worker threads for PAM conversations and passwd lookups (Dovecot's
#: auth-worker process_limit is 30; pam_unix mostly sleeps).
WORKER_THREADS = 16

_pool: ThreadPool | None = None


def worker_pool(reactor: Any = None) -> ThreadPool:
    """The shared pool for blocking auth backends (PAM, getpwnam), started
    on first use and stopped at reactor shutdown."""
    global _pool
    if _pool is None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        pool = ThreadPool(minthreads=0, maxthreads=WORKER_THREADS, name="authd-workers")
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", stop_worker_pool)
        _pool = pool
    return _pool


def stop_worker_pool() -> None:
    """Stop the shared pool (waits for running conversations)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.stop()


