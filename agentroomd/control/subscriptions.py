"""`message.subscribe` / `message.unsubscribe`: the inbox streamed to a control connection.

The reply `{subscription, cursor, oldest}` goes out first; then a pump task of that connection sends
one `message.received` notification per message (backlog after `since`, then live). When the inbox
ends the subscription (lagged, shutdown) the pump sends `message.closed` whose error carries
`data.resume_from`: resubscribing with `since=resume_from` continues without a gap or a duplicate.

A peer's session closing while the stream is live sends `session.closed` in its place among the
messages (a message received before the CLOSE is notified first). It is not journaled, so a replay
(`since`) does not repeat it: `peer.list` shows the state "closed" to whoever was away.
"""

import functools

from agentroomd.control import api
from agentroomd.control.connection import Connection, ConnectionGoneError, Gauge
from agentroomd.control.inbox import Inbox, SessionClosed, Subscription
from agentroomd.control.rpc import Caller, MethodRegistry

MAX_SUBSCRIPTIONS_PER_CONNECTION = 8


def register_subscription_methods(registry: MethodRegistry, inbox: Inbox, pumps: Gauge) -> None:
    async def subscribe(params: api.SubscribeParams, caller: Caller) -> api.SubscribeResult:
        connection = _connection(caller)
        if len(connection.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise api.RpcError(
                api.LIMIT_EXCEEDED, f"at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection"
            )
        if params.since is not None and params.since < 0:
            raise api.RpcError(api.INVALID_PARAMS, "since must be 0 or a cursor seen before", errors=["since: < 0"])
        subscription = inbox.subscribe(params.since, session_events=True)
        connection.subscriptions[subscription.id] = subscription
        caller.after_reply(functools.partial(_pump, connection, subscription, pumps))
        return api.SubscribeResult(
            subscription=subscription.id, cursor=subscription.high, oldest=inbox.journal.oldest_cursor
        )

    async def unsubscribe(params: api.UnsubscribeParams, caller: Caller) -> api.Empty:
        connection = _connection(caller)
        subscription = connection.subscriptions.pop(params.subscription, None)
        if subscription is None:
            raise api.RpcError(api.NOT_FOUND, f"no subscription {params.subscription!r} on this connection")
        subscription.detach()
        return api.Empty()

    registry.register(api.MESSAGE_SUBSCRIBE, subscribe)
    registry.register(api.MESSAGE_UNSUBSCRIBE, unsubscribe)


def _connection(caller: Caller) -> Connection:
    if not isinstance(caller, Connection):  # only in-process callers without a socket
        raise api.RpcError(api.INVALID_STATE, "subscriptions need a control connection")
    return caller


async def _pump(connection: Connection, subscription: Subscription, pumps: Gauge) -> None:
    pumps.enter()
    try:
        while (item := await subscription.next_item()) is not None:
            if isinstance(item, SessionClosed):
                closed = api.SessionClosedNotification(subscription=subscription.id, peer=item.peer, by=item.by,
                                                       ts=item.ts)
                await connection.notify(api.SESSION_CLOSED, api.params_converter.unstructure(closed))
                continue
            notification = api.ReceivedNotification(subscription=subscription.id, message=item)
            await connection.notify(api.MESSAGE_RECEIVED, api.params_converter.unstructure(notification))
        end = subscription.end
        if end is not None and not subscription.detached:
            error = api.RpcError(end.kind, end.message, resume_from=subscription.resume_from)
            await connection.notify(api.MESSAGE_CLOSED, {"subscription": subscription.id, "error": error.to_json()})
    except ConnectionGoneError:
        pass  # the client left; nothing to tell it
    finally:
        subscription.detach()
        connection.subscriptions.pop(subscription.id, None)
        pumps.leave()
