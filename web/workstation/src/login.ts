// Log-in with the service's users (POST /api/login); the token goes to sessionStorage.
import { login } from './api';

export function showLogin(app: HTMLElement): void {
  app.innerHTML = `
    <form class="login" id="login-form">
      <h2>Sign in</h2>
      <input name="user" id="login-user" placeholder="user" autocomplete="username" required>
      <input name="password" id="login-password" type="password" placeholder="password"
             autocomplete="current-password" required>
      <button type="submit" id="login-submit">Sign in</button>
      <div class="error" id="login-error" role="alert"></div>
    </form>`;
  const form = app.querySelector('#login-form') as HTMLFormElement;
  (form.querySelector('#login-user') as HTMLInputElement).focus();
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const error = app.querySelector('#login-error') as HTMLElement;
    error.textContent = '';
    try {
      await login(String(data.get('user')), String(data.get('password')));
      location.hash = '#/worklist';
    } catch (exc) {
      error.textContent = (exc as Error).message.startsWith('401') ? 'Wrong user or password' : String(exc);
    }
  });
}
