// The settings panel, built from the server's GET /v1/settings: names, types, defaults,
// bounds, choices and help all come from there, so nothing here repeats them.

const MAIN = ["steps", "guidance", "seed", "category", "strategy", "dilation", "paste"];
const WIDE = new Set(["seed", "category", "paste", "resize_mask"]);
const STORAGE_KEY = "moebius.settings";
const SEGMENTED_MAX = 3; // choices shown as buttons; more become a list
const LABELS = { image_size: "Working size", noise_offset: "Noise offset", crop_padding: "Crop padding", resize_mask: "Resize a mask of another size" };

const CHOICE_LABELS = { ddim: "DDIM", "dpm++": "DPM++" };

function choiceLabel(choice) {
  return CHOICE_LABELS[choice] ?? choice.charAt(0).toUpperCase() + choice.slice(1);
}

function label(name) {
  return LABELS[name] ?? name.charAt(0).toUpperCase() + name.slice(1).replaceAll("_", " ");
}

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

export class SettingsPanel {
  constructor(mainForm, advancedForm, schema) {
    this.rows = new Map(schema.map((row) => [row.name, row]));
    this.fields = new Map();
    for (const row of schema) {
      const form = MAIN.includes(row.name) ? mainForm : advancedForm;
      const field = this.#build(row);
      this.fields.set(row.name, field);
      form.append(field.node);
    }
    // keep the main ones in the order above
    for (const name of MAIN) if (this.fields.has(name)) mainForm.append(this.fields.get(name).node);
    this.#restore();
    for (const form of [mainForm, advancedForm]) form.addEventListener("change", () => this.#save());
  }

  #build(row) {
    const id = `setting-${row.name}`;
    const help = element("span", { class: "help", title: row.help, text: "?" });
    const node = element("div", { class: `field${WIDE.has(row.name) ? " wide" : ""}`, title: row.help });
    let read;
    let write;
    if (row.type === "choice" && row.choices.length <= SEGMENTED_MAX) {
      const group = element("div", { class: "segmented", role: "radiogroup", "aria-label": label(row.name) });
      for (const choice of row.choices) {
        const input = element("input", { type: "radio", name: id, value: choice });
        group.append(element("label", {}, [input, element("span", { text: choiceLabel(choice) })]));
      }
      node.append(element("span", { class: "label", text: label(row.name) }, [help]), group);
      read = () => group.querySelector("input:checked")?.value ?? row.default;
      write = (value) => {
        for (const input of group.querySelectorAll("input")) input.checked = input.value === value;
      };
    } else if (row.type === "choice") {
      const select = element("select", { id, name: row.name }, row.choices.map((c) => element("option", { value: c, text: choiceLabel(c) })));
      node.append(element("label", { for: id, text: label(row.name) }, [help]), select);
      read = () => select.value;
      write = (value) => (select.value = value);
    } else if (row.type === "bool") {
      const input = element("input", { id, type: "checkbox", name: row.name });
      node.append(element("label", { class: "switch" }, [input, label(row.name)]));
      read = () => input.checked;
      write = (value) => (input.checked = Boolean(value));
    } else {
      const input = element("input", {
        id,
        name: row.name,
        type: "number",
        inputmode: row.type === "int" ? "numeric" : "decimal",
        min: row.low,
        max: row.high,
        step: row.type === "int" ? 1 : "any",
        placeholder: row.nullable ? (row.name === "seed" ? "random" : "model's") : undefined,
      });
      const control = row.name === "seed" ? this.#seedControl(input) : input;
      node.append(element("label", { for: id, text: label(row.name) }, [help]), control);
      read = () => input.value.trim();
      write = (value) => (input.value = value === null || value === undefined ? "" : String(value));
    }
    write(row.default);
    return { node, read, write };
  }

  #seedControl(input) {
    const dice = element("button", { type: "button", class: "btn", title: "A new random seed each run", "aria-label": "Random seed" });
    dice.innerHTML = '<svg><use href="#i-dice"/></svg>';
    dice.addEventListener("click", () => {
      input.value = "";
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
    return element("div", { class: "input-row" }, [input, dice]);
  }

  /** The settings to send, as form values ("" or "random" = none, for nullable ones). */
  values() {
    const values = {};
    for (const [name, field] of this.fields) {
      const value = field.read();
      const row = this.rows.get(name);
      if (value === "" && row.nullable) values[name] = name === "seed" ? "random" : "";
      else if (value === "") values[name] = this.#default(name);
      else values[name] = value;
    }
    return values;
  }

  set(name, value) {
    this.fields.get(name)?.write(value);
    this.#save();
  }

  reset() {
    for (const [name, field] of this.fields) field.write(this.#default(name));
    this.#save();
  }

  #default(name) {
    return this.defaults && name in this.defaults ? this.defaults[name] : this.rows.get(name).default;
  }

  /** A model's own defaults (GET /v1/models): fields still at the previous default take the
   * new one; values the user chose stay. */
  useDefaults(defaults) {
    for (const [name, field] of this.fields) {
      const before = this.#default(name);
      if (!(name in defaults) || String(field.read()) !== String(before ?? "")) continue;
      field.write(defaults[name]);
    }
    this.defaults = defaults;
    this.#save();
  }

  /** Grey out the settings a model does not use (the OpenCV fills ignore most). */
  useOnly(names) {
    const used = new Set(names);
    for (const [name, field] of this.fields) {
      const off = !used.has(name);
      field.node.classList.toggle("disabled", off);
      for (const control of field.node.querySelectorAll("input, select, button")) control.disabled = off;
    }
  }

  #save() {
    try {
      const values = {};
      for (const [name, field] of this.fields) values[name] = field.read();
      localStorage.setItem(STORAGE_KEY, JSON.stringify(values));
    } catch {
      // storage unavailable (private mode): settings simply do not persist
    }
  }

  #restore() {
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}");
    } catch {
      return;
    }
    for (const [name, value] of Object.entries(saved)) if (this.fields.has(name)) this.fields.get(name).write(value);
  }
}
