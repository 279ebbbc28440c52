"""Spoofed request headers: the ones that would steer a route or method, and the ones that describe the
client (address, scheme, port), which the gateway believes from trusted proxies only."""

from __future__ import annotations

# Make the upstream serve another path, method or host: dropped whoever sends them.
STEERING = [
    ("X-Original-URL", "/paid"), ("X-Rewrite-URL", "/paid"), ("X-Original-URI", "/paid"), ("X-Rewrite-URI", "/paid"),
    ("X-Override-URL", "/paid"), ("X-Forwarded-URI", "/paid"), ("X-Forwarded-Path", "/paid"),
    ("X-Forwarded-Prefix", "/admin"), ("X-Script-Name", "/admin"), ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"), ("X-Method-Override", "DELETE"), ("X-Original-Method", "DELETE"),
    ("X-HTTP-DestinationURL", "http://internal/"), ("X-Original-Host", "admin.internal"), ("X-Host", "admin.internal"),
    ("X-HTTP-Host-Override", "admin.internal"), ("X-Forwarded-Server", "admin.internal"),
    ("X-Proxy-URL", "http://internal/"), ("X-Envoy-Original-Path", "/paid"), ("X-Envoy-Internal", "true"),
    ("X-Original-Anything", "x"), ("x-http-method-override", "PUT"), ("X-ORIGINAL-URL", "/paid"),
]
# Describe the client (address, scheme, port): believed from trusted proxies only.
CLIENT_FACTS = [
    ("Forwarded", "for=10.0.0.1;proto=https"), ("Forwarded-For", "10.0.0.1"), ("X-Forwarded", "for=10.0.0.1"),
    ("X-Real-IP", "10.0.0.1"), ("True-Client-IP", "10.0.0.1"), ("X-Client-IP", "10.0.0.1"),
    ("X-Cluster-Client-IP", "10.0.0.1"), ("CF-Connecting-IP", "10.0.0.1"), ("Fastly-Client-IP", "10.0.0.1"),
    ("X-Originating-IP", "10.0.0.1"), ("X-Remote-IP", "10.0.0.1"), ("X-Remote-Addr", "10.0.0.1"),
    ("Client-IP", "10.0.0.1"), ("X-ProxyUser-Ip", "10.0.0.1"), ("X-Azure-ClientIP", "10.0.0.1"),
    ("X-Url-Scheme", "https"), ("Front-End-Https", "on"), ("X-Forwarded-Port", "443"), ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"), ("X-Forwarded-Protocol", "https"), ("X-Forwarded-Anything", "x"),
]
