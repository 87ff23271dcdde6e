import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, Session } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  COMM_TARGET,
  IJobNotice,
  IJobState,
  JobMessage,
  STATE_REQUEST
} from './protocol';

/**
 * The job comm of one session context's kernel, kept open across restarts
 * and kernel changes.
 *
 * A kernel that closes the comm is not proxied: its state stays `null`
 * until the kernel is restarted or changed.
 */
export class JobChannel implements IDisposable {
  constructor(readonly sessionContext: ISessionContext) {
    sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    sessionContext.statusChanged.connect(this._onStatusChanged, this);
    sessionContext.disposed.connect(this.dispose, this);
    this._open();
  }

  /** The last state the proxy sent, `null` for a kernel that is not proxied. */
  get state(): IJobState | null {
    return this._state;
  }

  /**
   * Seconds left in the job now: the `left` of the last state counted down
   * from its arrival, so the browser's clock need not agree with the node's.
   */
  get secondsLeft(): number | null {
    const left = this._state?.job?.left ?? null;
    if (left === null) {
      return null;
    }
    return Math.max(0, left - (performance.now() - this._receivedAt) / 1000);
  }

  get stateChanged(): ISignal<this, IJobState | null> {
    return this._stateChanged;
  }

  get noticeReceived(): ISignal<this, IJobNotice> {
    return this._noticeReceived;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Ask the proxy for a fresh state; it comes through `stateChanged`. */
  requestState(): void {
    if (this._comm && !this._comm.isDisposed) {
      this._comm.send(STATE_REQUEST);
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    if (this._comm && !this._comm.isDisposed) {
      this._comm.close();
    }
    this._comm = null;
    Signal.clearData(this);
  }

  private _open(): void {
    const kernel = this.sessionContext.session?.kernel;
    // Idle or busy: connected to a running kernel, not in the middle of a restart.
    if (
      this._comm ||
      this._refused ||
      !kernel?.handleComms ||
      (kernel.status !== 'idle' && kernel.status !== 'busy')
    ) {
      return;
    }
    const comm = kernel.createComm(COMM_TARGET);
    comm.onMsg = msg => {
      if (comm === this._comm) {
        this._onMessage(msg.content.data as unknown as JobMessage);
      }
    };
    comm.onClose = () => {
      if (comm === this._comm) {
        this._comm = null;
        this._refused = true;
        this._setState(null);
      }
    };
    this._comm = comm;
    comm.open({});
  }

  private _onMessage(message: JobMessage): void {
    if (message.kind === 'state') {
      this._receivedAt = performance.now();
      this._setState(message);
    } else if (message.kind === 'notice') {
      this._noticeReceived.emit(message);
    }
  }

  /** A new kernel, or the same one restarted (SessionContext.restartKernel says so too). */
  private _onKernelChanged(
    _: ISessionContext,
    change: Session.ISessionConnection.IKernelChangedArgs
  ): void {
    if (change.oldValue !== change.newValue) {
      this._forget(change.oldValue);
      this._setState(null);
    }
    this._open();
  }

  /**
   * Lab disposes a kernel's comms on a restart, just after saying it restarts;
   * the proxy's comms outlive it. Close ours while it can be closed, and open
   * a new one once the kernel is back.
   */
  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting') {
      this._forget(this.sessionContext.session?.kernel ?? null);
    } else {
      this._open();
    }
  }

  /** Let go of the comm (closing it on `kernel`, if that is still connected). */
  private _forget(kernel: Kernel.IKernelConnection | null): void {
    if (kernel && !kernel.isDisposed && this._comm && !this._comm.isDisposed) {
      this._comm.close();
    }
    this._comm = null;
    this._refused = false;
  }

  private _setState(state: IJobState | null): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _comm: Kernel.IComm | null = null;
  private _refused = false;
  private _state: IJobState | null = null;
  private _receivedAt = 0;
  private _isDisposed = false;
  private _stateChanged = new Signal<this, IJobState | null>(this);
  private _noticeReceived = new Signal<this, IJobNotice>(this);
}
