// Hash routes (#/login, #/worklist, #/study/<uid>) so that static files are all the service has to serve.
import { logout, session } from './api';
import { showLogin } from './login';
import { showWorklist } from './worklist';
import { showViewer } from './viewer';

const app = document.getElementById('app') as HTMLElement;
let leave: (() => void) | null = null;

async function route(): Promise<void> {
  leave?.();
  leave = null;
  const s = session();
  const who = document.getElementById('who') as HTMLElement;
  const out = document.getElementById('logout') as HTMLButtonElement;
  who.textContent = s ? `${s.user} (${s.role})` : '';
  out.hidden = !s;
  const hash = location.hash || '#/worklist';
  if (!s || hash === '#/login') {
    if (hash !== '#/login') { location.hash = '#/login'; return; }
    showLogin(app);
    return;
  }
  const study = /^#\/study\/([^/?]+)/.exec(hash);
  if (study) {
    leave = await showViewer(app, decodeURIComponent(study[1]));
  } else {
    leave = await showWorklist(app);
  }
}

document.getElementById('logout')?.addEventListener('click', () => { logout(); location.hash = '#/login'; });
window.addEventListener('hashchange', () => { void route(); });
void route();
