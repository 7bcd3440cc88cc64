// Copy buttons of the email admin page. The page reads fine without this
// script: the buttons stay hidden and the text can be selected by hand.
"use strict";
(function () {
  function copied(btn) {
    btn.textContent = "Copied";
    btn.classList.add("copied");
    setTimeout(function () { btn.textContent = "Copy"; btn.classList.remove("copied"); }, 4000);
  }
  function fallback(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "offscreen";
    document.body.appendChild(ta);
    ta.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(ta);
    return ok;
  }
  document.querySelectorAll("button.copy").forEach(function (btn) {
    btn.hidden = false;
    btn.addEventListener("click", function () {
      var el = document.getElementById(btn.getAttribute("data-copy"));
      if (!el) { return; }
      var text = el.textContent;
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(function () { copied(btn); }, function () {
          if (fallback(text)) { copied(btn); } else { btn.textContent = "Select and copy by hand"; }
        });
      } else if (fallback(text)) {
        copied(btn);
      } else {
        btn.textContent = "Select and copy by hand";
      }
    });
  });
})();
