// The seed UI's socket.io client, as its pages connect: `io({auth: {token}})`, then every
// `P2PSub` message. Prints one JSON line per event on stdout: {"event": "connect"},
// {"event": "websocket"} (once it speaks over a WebSocket),
// {"event": "P2PSub", "message": {...}}, {"event": "connect_error", "message": "..."},
// {"event": "disconnect", "reason": "..."}. Exits when its standard input closes.
//
// Usage: node socketio.mjs <api base URL> <token>
import { io } from 'socket.io-client';

const [base, token] = process.argv.slice(2);
const socket = io(base, { auth: { token }, reconnection: false });
const say = (line) => process.stdout.write(JSON.stringify(line) + '\n');

socket.on('connect', () => {
  say({ event: 'connect' });
  if (socket.io.engine.transport.name === 'websocket') say({ event: 'websocket' });
});
// socket.io opens with long-polling and upgrades to a WebSocket (before or after `connect`).
socket.io.engine.on('upgrade', (transport) => { if (socket.connected) say({ event: transport.name }); });
socket.on('P2PSub', (message) => say({ event: 'P2PSub', message }));
socket.on('connect_error', (error) => say({ event: 'connect_error', message: error.message }));
socket.on('disconnect', (reason) => say({ event: 'disconnect', reason }));

process.stdin.on('end', () => { socket.close(); process.exit(0); });
process.stdin.resume();
