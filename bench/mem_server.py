#!/usr/bin/env python3
"""A yardstick for pulls in bench/run: an HTTP server that answers every GET with the bytes
of one file, held in memory and sent in 1 MiB writes. It reads no file per request and
parses next to nothing: one copy per byte, from memory that is not in the CPU's cache.

Usage: mem_server.py PORT FILE
"""
import os
import socket
import sys


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "rb") as f:
        data = memoryview(f.read())
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    while True:
        conn, _ = server.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            else:
                conn.sendall(head)
                for offset in range(0, len(data), 1 << 20):
                    conn.sendall(data[offset:offset + (1 << 20)])


if __name__ == "__main__":
    main()
