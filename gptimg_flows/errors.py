"""Typed errors. The class decides the retry policy, so a new failure mode is a new class here.

Messages never contain credentials: they are built from status codes and the provider's own
error text, never from request headers.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every error a provider call can raise."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        job_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message
        #: Nothing was created or billed (the provider refused the submit, or it never left):
        #: a route may send the request to another member.
        self.unpaid = False
        self.provider = provider
        self.job_id = job_id
        self.status_code = status_code
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.provider:
            where.append(self.provider)
        if self.job_id:
            where.append(f"job {self.job_id}")
        if self.status_code is not None:
            where.append(f"HTTP {self.status_code}")
        prefix = f"[{', '.join(where)}] " if where else ""
        return f"{prefix}{self.message}"

    def about(self, *, provider: str | None = None, job_id: str | None = None) -> ProviderError:
        """Fill in the provider and job this error belongs to, where it did not say."""
        self.provider = self.provider or provider
        self.job_id = self.job_id or job_id
        self.args = (self._render(),)
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # Keep keyword-only fields across pickling (Prefect persists task exceptions).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[ProviderError], message: str, state: dict[str, object]) -> ProviderError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.args = (err._render(),)
    return err


class RetryableError(ProviderError):
    """Transient: the same call may succeed later. Only these are retried."""


class RateLimited(RetryableError):
    """The provider answered 429; `retry_after` is its hint in seconds, when it gave one.

    `gave_up`: a paid submit waited for the account's limit as long as it may (the credentials
    block's `rate_limit_wait_seconds`): the row fails, and is not retried.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        gave_up: bool = False,
        **kw: object,
    ) -> None:
        self.retry_after = retry_after
        self.gave_up = gave_up
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ServerError(RetryableError):
    """The provider answered 5xx, or a response that is not what its API documents."""


class TransportError(RetryableError):
    """The connection failed, timed out, or broke mid-response (including truncated downloads).

    `request_sent` tells whether the provider may have received the request: after a paid
    submit that is the difference between "retry" and "look the job up first".
    """

    def __init__(self, message: str, *, request_sent: bool = True, **kw: object) -> None:
        self.request_sent = request_sent
        super().__init__(message, **kw)  # type: ignore[arg-type]


class InvalidRequest(ProviderError):
    """The request cannot be honoured; raised before any credit is spent where we can tell."""

    def __init__(self, message: str, *, field: str | None = None, **kw: object) -> None:
        self.field = field
        super().__init__(message, **kw)  # type: ignore[arg-type]


class AuthError(ProviderError):
    """Credentials missing or refused (401/403). Retrying cannot help."""


class InsufficientCredits(ProviderError):
    """The account is out of credits (402 or the provider's equivalent)."""


class ContentRejected(ProviderError):
    """The provider's moderation refused the prompt or an input image."""


class JobFailed(ProviderError):
    """The provider accepted the job and then reported it failed or canceled."""


class JobTimeout(ProviderError):
    """The job did not finish before our polling deadline. It may still finish and be billed."""


class OutputExpired(ProviderError):
    """An output URL no longer serves the image; re-resolve it, then download again."""


class InvalidOutput(ProviderError):
    """A download is not the image it claims to be, or exceeds the size cap."""


class MalformedResponse(ProviderError):
    """The provider answered with something that is not its documented JSON.

    Not retried: after a submit, the job may exist and be billed, so a blind retry could pay
    twice.
    """


class SubmitUncertain(ProviderError):
    """A submit for this key was sent but its answer never recorded: it may have been billed.

    Not retried: re-submitting could pay twice. Re-run with `refresh=True` to pay for a new one.
    """


class BatchPending(ProviderError):
    """A Batch API batch holding this request was still running when the run stopped waiting
    (`batch_wait_seconds`): a later run collects its images; nothing is sent again."""


class DamagedRecord(ProviderError):
    """A record in the archive cannot be read (truncated, not JSON, the wrong shape). The
    message names the file and what to do. Not retried: a second read finds the same bytes."""


class BudgetExceeded(ProviderError):
    """Paying for this would pass a budget (`max_cost`, or a credentials block's daily spend
    limit), or the cost cannot be estimated for a budget: refused before the provider is
    called. Never retried."""


class RoutedElsewhere(ProviderError):
    """This request was already submitted to another member of its route: it stays there
    (polled, resumed and downloaded there), never sent to a second seller."""

    def __init__(self, message: str, *, member: str, **kw: object) -> None:
        self.member = member
        super().__init__(message, **kw)  # type: ignore[arg-type]


def nothing_created(exc: ProviderError) -> bool:
    """The answer to a paid submit says the provider created nothing, so the request may be
    sent again (or to another member): a 429, a 503 (the server declined to take it), a 4xx
    refusal (bad request, credentials, credits, moderation), a connection that never carried
    the request, or our own budget's refusal. A 500/502/504, a reset or a timeout after
    sending, an answer we cannot read or any other surprise may have created a job: it is
    looked up where the provider can be asked, otherwise uncertain (docs/wire.md)."""
    if isinstance(exc, TransportError):
        return not exc.request_sent
    if isinstance(exc, ServerError):
        return exc.status_code == 503
    return isinstance(
        exc,
        RateLimited
        | InvalidRequest
        | AuthError
        | InsufficientCredits
        | ContentRejected
        | BudgetExceeded,
    )


def can_move_on(exc: BaseException) -> bool:
    """A route may try another member: the submit created nothing (`unpaid`), and the seller
    is down, refusing the account (401/403, no credits, a spend limit) or full (a rate limit
    waited out). Content refused, a bad request, a lost answer or a failed job never move."""
    if not isinstance(exc, ProviderError) or not exc.unpaid:
        return False
    if isinstance(exc, RateLimited):
        return exc.gave_up
    return isinstance(
        exc, ServerError | TransportError | AuthError | InsufficientCredits | BudgetExceeded
    )


def is_retryable(exc: BaseException) -> bool:
    """The one retry predicate every task uses."""
    if isinstance(exc, RateLimited) and getattr(exc, "gave_up", False):
        return False
    return isinstance(exc, RetryableError)
