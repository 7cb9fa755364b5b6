import socket, sys, time, os
path = sys.argv[1]
size = os.path.getsize(path)
s = socket.socket(socket.AF_UNIX); s.connect("/var/run/docker.sock")
t0 = time.time()
s.sendall(b"POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n" % size)
with open(path, "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b: break
        s.sendall(b)
t1 = time.time()
resp = b""
while True:
    b = s.recv(65536)
    resp += b
    if b"\r\n0\r\n\r\n" in resp or not b: break
t2 = time.time()
print(f"{path}: send {t1-t0:.2f}s after-send {t2-t1:.2f}s", resp[-200:].decode(errors="replace").replace("\r\n"," "))
