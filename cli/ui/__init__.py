"""`linesight ui`: the web pages and HTTP API, a process of its own beside the stations (docs/ui.md).

It subscribes to the stations' ZeroMQ feeds, reads their archives, scores uploaded images with its own engine and
sends commands the way every command reaches a station (MQTT, checked by the daemon's own models), so a crash or a
slow browser here never touches a station. `app` (routes), `feeds` (station state), `inspect` (POST /inspect),
`commands` (to a station over MQTT), `review` (archive), `auth` (tokens), `events` (Server-Sent Events).
"""
