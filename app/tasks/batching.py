"""Tasks whose messages a worker hands to its pool several at a time when a backlog forms.

A short task pays a fixed price per message in the pool process (tracing, signals, the
result write, the round trip to the main process for the next message) that can be as
large as its own work. :class:`BatchedTask` keeps that price per *pool call* instead:

- The worker's main process receives each message exactly as Celery's default strategy
  does (task-received event, revocation and ETA handling, late acknowledgement), then
  hands the request to a small dispatcher instead of straight to the pool.
- While a pool process is free, a request goes on at once, alone, through Celery's own
  execution path (``celery.app.trace``): without a backlog nothing changes, not even the
  latency.
- While every pool process is busy, requests wait in the main process; when a process
  frees up, everything waiting (up to ``batch_max``) goes to it as **one** call of the
  task's :meth:`BatchedTask.run_batch`. Each request is then acknowledged, reported
  (task-succeeded event, result in the result backend) and counted one by one.

Nothing about delivery changes: a message is acknowledged only after its request
returned (``acks_late``), a pool process killed in the middle of a batch rejects and
requeues every message of the batch (``task_reject_on_worker_lost``), and messages
still waiting in the main process when the worker stops are unacknowledged and so are
delivered again. How many messages can wait is bounded by the worker's prefetch
(``--prefetch-multiplier`` × concurrency), so the prefetch sets the largest batch
that can form.

``run_batch`` returns one outcome per request: ``("done", retval)``, or
``("alone", None)`` to send that request through the single-request path after all
(for instance when the batch could not claim its work and the task's own retry logic
should take over).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import ref

from celery import Task
from celery.app.trace import LOG_SUCCESS, fast_trace_task, trace_task_ret
from celery.app.trace import info as trace_info
from celery.utils.functional import maybe
from celery.utils.saferepr import saferepr as safe_repr
from celery.worker import state as worker_state
from celery.worker import strategy as celery_strategy

logger = logging.getLogger(__name__)

DONE = "done"
ALONE = "alone"
#: Seconds a returned batch's acknowledgements wait for the next batch to reach the pool process.
HANDOVER = 0.001


@dataclass
class BatchItem:
    """One request of a batch, as the pool process sees it (plain data: it is pickled)."""

    id: str
    kwargs: dict[str, Any]
    hostname: str
    delivery_info: dict[str, Any] = field(default_factory=dict)


class BatchedTask(Task):
    """Base class of a task that can also run several requests in one pool call."""

    abstract = True
    #: Most requests handed to one pool call.
    batch_max = 8

    def run_batch(self, items: Sequence[BatchItem]) -> list[tuple[str, Any]]:
        """Run every item; one ``(DONE, retval)`` or ``(ALONE, None)`` per item, in order."""
        raise NotImplementedError

    def batchable(self, request: Any) -> bool:
        """Whether a received request may share a pool call (redelivered ones go alone)."""
        return not (request.delivery_info or {}).get("redelivered")

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Callable[..., Any]:
        dispatcher = _Dispatcher(task, app, consumer)
        # Celery's own strategy does everything up to handing the request to the pool;
        # only that last step (``consumer.on_task_request``) is ours.
        return celery_strategy.default(task, app, _ConsumerView(consumer, dispatcher.add))


class _ConsumerView:
    """The worker's consumer, except for where received requests go."""

    def __init__(self, consumer: Any, on_task_request: Callable[[Any], None]) -> None:
        self._consumer = consumer
        self.on_task_request = on_task_request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class _Dispatcher:
    """Main process: hands requests to the pool, alone while a process is free, else in batches."""

    def __init__(self, task: BatchedTask, app: Any, consumer: Any) -> None:
        self.task = task
        self.pool = consumer.pool
        self.hub = getattr(consumer, "hub", None)  # the event loop of prefork workers; None for solo/threads
        self.trace = fast_trace_task if app.use_fast_trace_task else trace_task_ret
        self.waiting: list[Any] = []
        self.in_flight = 0
        self.lock = threading.RLock()  # pools with threads call back from other threads

    def capacity(self) -> int:
        return max(1, int(getattr(self.pool, "num_processes", None) or 1))

    def add(self, request: Any) -> None:
        with self.lock:
            self.waiting.append(request)
        self.flush()

    def flush(self) -> None:
        while True:
            with self.lock:
                if not self.waiting or self.in_flight >= self.capacity() or _stopping():
                    # Waiting requests of a worker that is stopping are never started: their
                    # messages, unacknowledged, go back to the queue when it disconnects.
                    return
                live = self.waiting[: self.task.batch_max]
                del self.waiting[: len(live)]
                self.in_flight += 1
            live = [r for r in live if not r.revoked()]  # revoked() acknowledges and reports them
            lone = [r for r in live if not self.task.batchable(r)]
            batch = [r for r in live if self.task.batchable(r)]
            try:
                if len(batch) > 1:
                    for request in lone:
                        self.alone(request, counted=False)
                    self.batch(batch)
                elif live:
                    for request in live[1:]:
                        self.alone(request, counted=False)
                    self.alone(live[0], counted=True)
                else:
                    self.done()
            except Exception:
                self.done()
                raise

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1
        self.flush()

    def alone(self, request: Any, counted: bool) -> None:
        """Celery's single-request execution (``Request.execute_using_pool``), noting when it ends."""
        time_limit, soft_time_limit = request.time_limits

        def finished(then: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                try:
                    return then(*args, **kwargs)
                finally:
                    if counted:
                        self.done()
            return call

        result = self.pool.apply_async(
            self.trace,
            args=(request.type, request.task_id, request.request_dict, request.body,
                  request.content_type, request.content_encoding),
            accept_callback=request.on_accepted,
            timeout_callback=request.on_timeout,
            callback=finished(request.on_success),
            error_callback=finished(request.on_failure),
            soft_timeout=soft_time_limit or self.task.soft_time_limit,
            timeout=time_limit or self.task.time_limit,
            correlation_id=request.task_id,
        )
        request._apply_result = maybe(ref, result)  # as Celery keeps it (for terminate/revoke)

    def batch(self, requests: list[Any]) -> None:
        items = [BatchItem(id=r.task_id, kwargs=dict(r.kwargs), hostname=r.hostname,
                           delivery_info=dict(r.delivery_info or {}))
                 for r in requests]
        soft = self.task.soft_time_limit or self.task.app.conf.task_soft_time_limit
        hard = self.task.time_limit or self.task.app.conf.task_time_limit

        def on_accepted(pid: int, time_accepted: float) -> None:
            for request in requests:
                request.on_accepted(pid, time_accepted)

        def on_timeout(soft_: bool, timeout: float) -> None:
            for request in requests:
                request.on_timeout(soft_, timeout)

        def on_return(outcomes: list[tuple[str, Any, float]]) -> None:
            # The pool process is free: the next batch goes to it first. The event loop
            # writes it to the process on its next turn; this batch's results are stored
            # and its messages acknowledged just after that, while the process works.
            self.done()
            if self.hub is not None:
                self.hub.call_later(HANDOVER, self.finish, requests, outcomes)
            else:
                self.finish(requests, outcomes)

        def on_error(exc_info: Any) -> None:
            self.done()
            for request in requests:
                request.on_failure(exc_info)

        n = len(requests)
        logger.debug("batch of %d %s requests", n, self.task.name)
        self.pool.apply_async(
            run_batch_in_pool,
            args=(self.task.name, items),
            accept_callback=on_accepted,
            timeout_callback=on_timeout,
            callback=on_return,
            error_callback=on_error,
            # The time limits are per request; a batch has that much per request it carries.
            soft_timeout=soft * n if soft else None,
            timeout=hard * n if hard else None,
            correlation_id=requests[0].task_id,
        )


    def finish(self, requests: list[Any], outcomes: list[tuple[str, Any, float]]) -> None:
        """Answer each request of a returned batch: its result stored and acknowledged, or run alone."""
        if len(outcomes) != len(requests):  # a run_batch that broke its contract
            logger.error("batch of %d %s requests answered %d outcomes; running them one by one",
                         len(requests), self.task.name, len(outcomes))
            outcomes = [(ALONE, None, 0.0)] * len(requests)
        for request, (kind, retval, runtime) in zip(requests, outcomes, strict=True):
            if kind == ALONE:
                self.alone(request, counted=False)
                continue
            # Stored here rather than in the pool process, and before the
            # acknowledgement, as Celery's own trace does.
            if not (request.ignore_result or self.task.ignore_result):
                try:
                    self.task.backend.mark_as_done(request.task_id, retval)
                except Exception as exc:  # the result backend is a copy; the request is done
                    logger.warning("could not store a batched request's result",
                                   extra={"task_id": request.task_id, "error": str(exc)[:200]})
            request.on_success((False, retval, runtime))


def _stopping() -> bool:
    # Set by the worker's SIGTERM/SIGQUIT handlers. A warm stop's value is the exit code 0,
    # which equals False: compared by identity, as celery.worker.state does.
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))


def run_batch_in_pool(task_name: str, items: list[BatchItem]) -> list[tuple[str, Any, float]]:
    """Pool process: run a batch; each request's outcome and its share of the run time."""
    from celery import current_app

    from app.metrics import TASK_RUNTIME, TASKS_SUCCEEDED, task_labels
    from app.tasks.base import mark_outbox_taken

    task: BatchedTask = current_app.tasks[task_name]
    start = time.monotonic()
    mark_outbox_taken([item.id for item in items])
    task.push_request(hostname=items[0].hostname, delivery_info=items[0].delivery_info, id=items[0].id)
    try:
        outcomes = task.run_batch(items)
    finally:
        task.pop_request()
    runtime = (time.monotonic() - start) / max(1, len(items))
    out: list[tuple[str, Any, float]] = []
    for item, (kind, retval) in zip(items, outcomes, strict=True):
        if kind == DONE:
            # The line Celery's own trace writes for each task, so logs read the same.
            trace_info(LOG_SUCCESS, {"id": item.id, "name": task_name, "return_value": safe_repr(retval),
                                     "runtime": runtime, "args": "()", "kwargs": safe_repr(item.kwargs)})
            labels = task_labels(task_name, item.delivery_info)
            TASK_RUNTIME.labels(*labels).observe(runtime)
            TASKS_SUCCEEDED.labels(*labels).inc()
        out.append((kind, retval, runtime))
    return out
