"""`linesight ui`: the web pages and HTTP API, a process of its own beside the stations (docs/ui.md).

It only subscribes to the stations' ZeroMQ feeds and scores uploaded images with its own engine, so a crash or a
slow browser here never touches a station. `app` (routes), `feeds` (station state), `inspect` (POST /inspect),
`auth` (tokens), `events` (Server-Sent Events).
"""
