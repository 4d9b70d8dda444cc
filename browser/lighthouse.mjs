// Lighthouse (npm, Google's audits) on Portico's web UI in Debian's chromium: the accessibility
// and best-practices scores of the sign-in page, the overview and the hosts page. Started by
// the Rust test `ui::the_web_ui_scores_full_marks_in_lighthouse`, which starts Portico with a
// few hosts and passes it in the environment:
//   TEST_API       the API's base URL (the UI is at `/`)
//   TEST_PASSWORD  the admin's password
//   CHROMIUM       the browser (default /usr/bin/chromium)
// Prints one line per page, `score: <page> accessibility=<n> best-practices=<n>` (0 to 100),
// the audits that failed, and Lighthouse's warnings (`warning: <page>: …`); exits 1 if a run
// failed.
import * as chromeLauncher from 'chrome-launcher';
import lighthouse from 'lighthouse';
import { chromium } from 'playwright-core';

const env = process.env;
const base = env.TEST_API;
const CATEGORIES = ['accessibility', 'best-practices'];

const chrome = await chromeLauncher.launch({
  chromePath: env.CHROMIUM || '/usr/bin/chromium',
  chromeFlags: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

/** Lighthouse's scores for `url` (the storage kept: the session signed in stays). */
async function audit(name, url) {
  const started = Date.now();
  const result = await lighthouse(url, {
    port: chrome.port,
    output: 'json',
    logLevel: 'error',
    onlyCategories: CATEGORIES,
    // Lighthouse's defaults otherwise (a phone's screen, simulated throttling, one second of
    // quiet network and CPU as "loaded": the overview polls every 2 s by design).
    disableStorageReset: true,
  });
  const { categories, audits, runtimeError } = result.lhr;
  if (runtimeError) throw new Error(`${name}: ${runtimeError.code} ${runtimeError.message}`);
  const scores = CATEGORIES.map((c) => `${c}=${Math.round(categories[c].score * 100)}`);
  process.stdout.write(`score: ${name} ${scores.join(' ')}\n`);
  process.stdout.write(`  took ${Date.now() - started} ms\n`);
  // A warning (a page that never settled, say) means the scores may be incomplete.
  for (const warning of result.lhr.runWarnings) process.stdout.write(`warning: ${name}: ${warning}\n`);
  for (const category of CATEGORIES) {
    for (const ref of categories[category].auditRefs) {
      const a = audits[ref.id];
      if (ref.weight > 0 && a.score !== null && a.score < 1) {
        process.stdout.write(`  failed: ${category}/${a.id}: ${a.title}${a.details && a.details.items ? ` ${JSON.stringify(a.details.items).slice(0, 400)}` : ''}\n`);
      }
    }
  }
}

try {
  await audit('sign-in', `${base}/`);
  // Signed in through the UI's own storage, as the sign-in form leaves it.
  const login = await fetch(`${base}/api/auth/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password: env.TEST_PASSWORD }),
  });
  const { token } = await login.json();
  const browser = await chromium.connectOverCDP(`http://127.0.0.1:${chrome.port}`);
  const page = await browser.contexts()[0].newPage();
  await page.goto(`${base}/`);
  await page.evaluate((t) => localStorage.setItem('portico.token', t), token);
  // The pages scored below are the signed-in ones, not the sign-in form again.
  await page.goto('about:blank');
  await page.goto(`${base}/#/hosts`);
  await page.getByRole('heading', { name: 'Hosts', exact: true }).waitFor({ timeout: 10000 });
  await page.close();
  await audit('overview', `${base}/#/overview`);
  await audit('hosts', `${base}/#/hosts`);
} catch (error) {
  process.stdout.write(`FAILED: ${error.stack || error}\n`);
  process.exitCode = 1;
} finally {
  await chrome.kill();
}
