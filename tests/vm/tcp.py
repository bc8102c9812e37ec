#!/usr/bin/python3
"""TCP with a SHA-256 at this end, for the guest side of a transfer.

  tcp.py recv ADDR PORT READY   listen, accept one connection, read to its end; touches READY once
                                listening; prints "BYTES SHA256"
  tcp.py send ADDR PORT LEN     connect, send LEN pseudo-random bytes, close; prints "BYTES SHA256"
"""
import hashlib, os, socket, sys

def main():
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    digest, total = hashlib.sha256(), 0
    if mode == "recv":
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(1)
            open(sys.argv[4], "w").close()
            s.settimeout(120)
            conn, _ = s.accept()
            conn.settimeout(120)
            with conn:
                while chunk := conn.recv(1 << 16):
                    digest.update(chunk)
                    total += len(chunk)
    else:
        left = int(sys.argv[4])
        with socket.create_connection((addr, port), timeout=30) as s:
            s.settimeout(120)
            while left:
                chunk = os.urandom(min(left, 1 << 16))
                s.sendall(chunk)
                digest.update(chunk)
                total += len(chunk)
                left -= len(chunk)
    print(total, digest.hexdigest())

main()
