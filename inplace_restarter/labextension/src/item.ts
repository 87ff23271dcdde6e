import { Dialog, showDialog } from '@jupyterlab/apputils';
import {
  ITranslator,
  nullTranslator,
  TranslationBundle
} from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';
import { ISignal, Signal } from '@lumino/signaling';

import { JobChannel } from './channel';
import { isWarning, msUntilChange, summary } from './format';

/**
 * `job 1234 · node2 · 41 min left · 1.2 / 8 GB` for the kernel of `channel`,
 * hidden while there is no state (no channel, or a kernel that is not proxied).
 * A click opens the details.
 */
export class JobItem extends Widget {
  constructor(translator: ITranslator = nullTranslator) {
    super({ node: document.createElement('button') });
    this._trans = translator.load('inplace_restarter');
    this.addClass('jp-InplaceRestarter-job');
    this.node.title = this._trans.__('The batch job of this kernel: click for details');
    this.node.addEventListener('click', () => void this._openDetails());
    this._render();
  }

  /** The channel whose state is shown; `null` shows nothing. */
  get channel(): JobChannel | null {
    return this._channel;
  }
  set channel(channel: JobChannel | null) {
    if (channel === this._channel) {
      return;
    }
    this._channel?.stateChanged.disconnect(this._render, this);
    this._channel = channel;
    channel?.stateChanged.connect(this._render, this);
    this._render();
  }

  /** Whether there is a state to show; the status bar asks. */
  get isActive(): boolean {
    return !!this._channel?.state;
  }

  get activeStateChanged(): ISignal<this, void> {
    return this._activeStateChanged;
  }

  dispose(): void {
    window.clearTimeout(this._tick);
    super.dispose();
  }

  private _render(): void {
    const state = this._channel?.state ?? null;
    const left = this._channel?.secondsLeft ?? null;
    if (this.isActive === this.isHidden) {
      this.setHidden(!this.isActive);
      this._activeStateChanged.emit();
    }
    this.node.textContent = state ? summary(state, left) : '';
    this.toggleClass('jp-mod-warning', !!state && isWarning(state, left));
    window.clearTimeout(this._tick);
    if (left !== null && left > 0) {
      this._tick = window.setTimeout(() => this._render(), msUntilChange(left));
    }
  }

  private async _openDetails(): Promise<void> {
    const channel = this._channel;
    if (!channel?.state) {
      return;
    }
    channel.requestState();
    await showDialog({
      title: this._trans.__('Where the kernel runs'),
      body: new JobDetails(channel, this._trans),
      buttons: [Dialog.okButton({ label: this._trans.__('Close') })]
    });
  }

  private _channel: JobChannel | null = null;
  private _tick = 0;
  private _trans: TranslationBundle;
  private _activeStateChanged = new Signal<this, void>(this);
}

/** The state's `info` text (time limit, end, memory) and the restarts so far, kept up to date while shown. */
class JobDetails extends Widget {
  constructor(
    private readonly _channel: JobChannel,
    private readonly _trans: TranslationBundle
  ) {
    super({ node: document.createElement('pre') });
    this.addClass('jp-InplaceRestarter-details');
    _channel.stateChanged.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this._channel.stateChanged.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const state = this._channel.state;
    if (!state) {
      this.node.textContent = '';
      return;
    }
    const restarts = state.restarts
      ? this._trans._n(
          'Restarted in place once so far',
          'Restarted in place %1 times so far',
          state.restarts
        )
      : this._trans.__('Not restarted so far');
    this.node.textContent = `${state.info.trimEnd()}\n${restarts}`;
  }
}
