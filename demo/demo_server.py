"""Kiln's demo session server: a page that opens a WebSocket, and the echo
behind it. Python standard library only, so it runs on any host with python3.
Listens on $KILN_PORT (default 8080); paths arrive without the /s/<token> prefix."""
import base64, hashlib, os, struct, json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!doctype html><meta charset=utf-8><title>Kiln demo</title>
<h1>Kiln demo session</h1><p>Started at <b>%s</b>, pid %d.</p>
<input id=msg value="hello"><button id=send>Send</button><pre id=log></pre>
<script>
const log = (t) => (document.getElementById('log').textContent += t + '\\n');
const ws = new WebSocket(location.href.replace(/^http/, 'ws').replace(/[^/]*$/, '') + 'ws');
ws.onopen = () => log('connected');
ws.onmessage = (e) => log('echo: ' + e.data);
document.getElementById('send').onclick = () => ws.send(document.getElementById('msg').value);
</script>"""
STARTED = time.strftime('%H:%M:%S')
MAGIC = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True  # small writes must not wait for delayed ACKs

    def log_message(self, *args):
        pass

    def send_body(self, code, body, ctype):
        data = body.encode()
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith('/ws') and self.headers.get('Upgrade', '').lower() == 'websocket':
            return self.websocket()
        if self.path.startswith('/stream'):
            # A chunked response written over time: proxies must pass it on as it comes.
            self.send_response(200)
            self.send_header('Content-Type', 'text/plain')
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            for i in range(5):
                part = ('chunk %d\n' % i).encode()
                self.wfile.write(b'%x\r\n%s\r\n' % (len(part), part))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b'0\r\n\r\n')
            return
        if self.path.startswith('/info'):
            return self.send_body(200, json.dumps({'pid': os.getpid(), 'started': STARTED, 'path': self.path}), 'application/json')
        self.send_body(200, PAGE % (STARTED, os.getpid()), 'text/html; charset=utf-8')

    def do_POST(self):
        n = int(self.headers.get('Content-Length') or 0)
        self.send_body(200, self.rfile.read(n).decode('utf-8', 'replace'), 'text/plain')

    def websocket(self):
        key = self.headers['Sec-WebSocket-Key']
        accept = base64.b64encode(hashlib.sha1((key + MAGIC).encode()).digest()).decode()
        self.send_response(101)
        self.send_header('Upgrade', 'websocket')
        self.send_header('Connection', 'Upgrade')
        self.send_header('Sec-WebSocket-Accept', accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack('>H', self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack('>Q', self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b'\0\0\0\0'
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close
                self.wfile.write(b'\x88\x00')
                return
            if opcode in (1, 2):  # echo text and binary frames back, unmasked
                n = len(payload)
                header = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack('>H', n) if n < 65536 else bytes([127]) + struct.pack('>Q', n))
                self.wfile.write(header + payload)
                self.wfile.flush()


# socketserver's listen backlog is 5: a page opening many connections at once would see SYNs dropped and retried a second later.
ThreadingHTTPServer.request_queue_size = 128
ThreadingHTTPServer(('127.0.0.1', int(os.environ.get('KILN_PORT', '8080'))), Handler).serve_forever()
