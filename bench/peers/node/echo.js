// ws (npm) echo server for weft's benchmark suite: echo every message.
// usage: node echo.js [--port N] [--deflate]
const { WebSocketServer } = require('ws');
const argv = process.argv;
const port = Number(argv[argv.indexOf('--port') + 1]) || 9204;
const deflate = argv.includes('--deflate');
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: deflate, maxPayload: 256 << 20 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
console.error(`ws echo on 127.0.0.1:${port} deflate=${deflate}`);
