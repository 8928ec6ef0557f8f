from twisted.application.service import ServiceMaker

TwistedAlive = ServiceMaker(  # type: ignore[no-untyped-call]
    "twisted_alive",
    "twisted_alive.service.tap",
    "A server with heartbeats, loss reasons and confirmed, resumable delivery.",
    "alive",
)
