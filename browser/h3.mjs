// Debian's chromium, forced onto QUIC for one origin (--origin-to-force-quic-on), loads a page
// through Portico's HTTP/3 endpoint. Started by the Rust test
// `http3::chromium_loads_a_page_over_http3`, which passes:
//   H3_NAME   a host name Portico routes
//   H3_PORT   Portico's HTTPS port (TCP and UDP)
//   CHROMIUM  the browser (default /usr/bin/chromium)
// Prints the protocol of the navigation and the page's text; exits 1 unless it was h3.
import { chromium } from 'playwright-core';
import { X509Certificate, createHash } from 'node:crypto';
import tls from 'node:tls';

const env = process.env;
const origin = `${env.H3_NAME}:${env.H3_PORT}`;
// Chromium takes a certificate it does not know over QUIC only by its key's hash: the leaf
// Portico serves for the name (asked over TCP first).
const leaf = await new Promise((resolve, reject) => {
  const socket = tls.connect({ host: '127.0.0.1', port: Number(env.H3_PORT), servername: env.H3_NAME, rejectUnauthorized: false }, () => {
    resolve(socket.getPeerCertificate().raw);
    socket.end();
  });
  socket.on('error', reject);
});
const spki = new X509Certificate(leaf).publicKey.export({ type: 'spki', format: 'der' });
const pin = createHash('sha256').update(spki).digest('base64');
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--enable-quic', `--origin-to-force-quic-on=${origin}`,
    `--host-resolver-rules=MAP ${env.H3_NAME} 127.0.0.1`,
    `--ignore-certificate-errors-spki-list=${pin}`],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const response = await page.goto(`https://${origin}/over-h3`, { timeout: 15000 });
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  const text = await page.evaluate(() => document.body.innerText);
  console.log(JSON.stringify({ protocol, status: response.status(), text }));
  process.exitCode = protocol === 'h3' && response.status() === 200 ? 0 : 1;
} finally {
  await browser.close();
}
