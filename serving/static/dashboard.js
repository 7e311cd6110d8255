// The dashboard's only script: refresh the panels, load a user or an item on demand.
(function () {
  "use strict";
  const hours = document.body.dataset.hours;
  const keyInput = document.getElementById("api-key");
  keyInput.value = sessionStorage.getItem("streamrec-key") || "";
  keyInput.addEventListener("change", () => { sessionStorage.setItem("streamrec-key", keyInput.value); showUser(); });
  document.querySelectorAll("a.window").forEach(a => a.classList.toggle("active", a.dataset.hours === hours));

  function headers() { return keyInput.value ? {"X-API-Key": keyInput.value} : {}; }

  async function fragment(url, target, options) {
    const response = await fetch(url, options || {});
    if (response.ok) {
      target.innerHTML = await response.text();
      return true;
    }
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    target.innerHTML = '<p class="error"></p>';
    target.firstChild.textContent = response.status + ": " + detail;
    return false;
  }

  let shownUser = null, shownItem = null;
  async function showUser(id) {
    if (id !== undefined) shownUser = id;
    if (shownUser === null) return;
    await fragment("/dashboard/users/" + encodeURIComponent(shownUser), document.getElementById("user"), {headers: headers()});
  }
  async function showItem(id) {
    if (id !== undefined) shownItem = id;
    if (shownItem === null) return;
    await fragment("/dashboard/items/" + encodeURIComponent(shownItem), document.getElementById("item"));
  }
  async function refresh() {
    await fragment("/dashboard/panels?hours=" + hours, document.getElementById("overview"));
    await showUser();
  }

  document.getElementById("user-form").addEventListener("submit", ev => {
    ev.preventDefault(); showUser(document.getElementById("user-id").value.trim());
  });
  document.getElementById("item-form").addEventListener("submit", ev => {
    ev.preventDefault(); showItem(document.getElementById("item-id").value.trim());
  });
  document.addEventListener("click", async ev => {
    const link = ev.target.closest("a.item-link");
    if (link) {
      ev.preventDefault();
      document.getElementById("item-id").value = link.dataset.item;
      await showItem(link.dataset.item);
      document.getElementById("item-card").scrollIntoView({behavior: "smooth"});
      return;
    }
    const forget = ev.target.closest("button#forget");
    if (forget) {
      if (!forget.classList.contains("armed")) {  // a second click confirms
        forget.classList.add("armed"); forget.textContent = "Click again to forget"; return;
      }
      const response = await fetch("/users/" + encodeURIComponent(forget.dataset.user), {method: "DELETE", headers: headers()});
      const body = await response.json();
      forget.replaceWith(Object.assign(document.createElement("span"), {
        className: response.ok ? "tag" : "error", id: "forget-result",
        textContent: response.ok ? "forgetting: " + body.status : response.status + ": " + body.detail}));
    }
  });
  setInterval(() => { if (document.getElementById("auto-refresh").checked) refresh(); }, 5000);
})();
